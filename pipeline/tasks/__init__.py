"""One module per task (``model.task``); see ``base`` for what each owns and ``registry`` for the names."""
