"""The served model behind token auth, and validation against a server the pipeline did not start."""

import json

import pytest
import requests

from pipeline.run.options import RunOptions
from pipeline.run.runner import run_validation
from pipeline.stages.archive import ArchiveConfig, build_archive
from pipeline.stages.export import export_model
from pipeline.stages.serve import ServeConfig, serve_model
from tests.helpers import in_process, make_project

pytestmark = pytest.mark.integration


def test_token_auth_on_and_endpoint_mode(no_leftovers):
    tmp = no_leftovers
    spec_path = make_project(tmp / "proj", spec_overrides={"serving": {
        "workers": 2, "batch_size": 3, "max_batch_delay_ms": 7, "response_timeout_s": 11, "startup_timeout_s": 90}})
    p = in_process(spec_path)
    spec, data = p.spec, p.rows
    exported = export_model(spec, p.model, data, p.base, tmp / "run" / "export")
    archive = build_archive(spec, ArchiveConfig(work_dir=tmp / "run" / "archive"), p.plan.handler, exported,
                            p.base.input_shape)
    with serve_model(spec, ServeConfig(run_dir=tmp / "run", mar_path=archive.mar_path,
                                       startup_timeout_s=90)) as server:
        config = (tmp / "run" / "torchserve" / "config.properties").read_text()
        assert "disable_token_authorization" not in config and "enable_model_api=false" in config
        assert all(f"=http://127.0.0.1:" in line for line in config.splitlines() if line.split("=")[0].endswith("_address")
                   and not line.startswith("grpc"))
        described = requests.get(f"{server.management_url}/models/tiny", timeout=10,
                                 headers={"Authorization": f"Bearer {server.management_token}"}).json()[0]
        assert (described["batchSize"], described["maxBatchDelay"], described["responseTimeout"]) == (3, 7, 11)
        assert [w["status"] for w in described["workers"]] == ["READY", "READY"]
        body = {"features": data.features[0].tolist()}
        predict_url = f"{server.inference_url}/predictions/tiny"
        refused = requests.post(predict_url, json=body, timeout=10)
        assert refused.status_code == 400 and "Token Authorization failed" in refused.text
        ok = requests.post(predict_url, json=body, timeout=10,
                           headers={"Authorization": f"Bearer {server.inference_token}"})
        assert ok.status_code == 200 and ok.headers.get("x-request-id")
        outcome = run_validation(RunOptions(spec_path=spec_path, reports_dir=tmp / "reports",
                                            model_store=tmp / "store2", endpoint=server.inference_url, publish=False,
                                            endpoint_token=server.inference_token))
        assert outcome.exit_code == 0, outcome.report.get("error")
        assert outcome.report["stages"]["server"]["started_by_pipeline"] is False
        assert outcome.report["stages"]["replay"]["answered"] == len(data)
        # the pipeline never stops a server it did not start
        assert requests.post(predict_url, json=body, timeout=10,
                             headers={"Authorization": f"Bearer {server.inference_token}"}).status_code == 200


def _self_signed(tmp):
    import subprocess

    key, cert = tmp / "key.pem", tmp / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return key, cert


class _TlsProxy:
    """An HTTPS front (like a KServe ingress) that forwards to a plain HTTP server and notes each request's headers."""

    def __init__(self, key, cert, upstream_port: int) -> None:
        import asyncio
        import ssl
        import threading

        self.seen: list[bytes] = []
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(str(cert), str(key))
        ready = threading.Event()

        async def pipe(reader, writer, note):
            try:
                while data := await reader.read(65536):
                    if note:
                        self.seen.append(data)
                    writer.write(data)
                    await writer.drain()
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        async def handle(reader, writer):
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", upstream_port)
            await asyncio.gather(pipe(reader, up_writer, True), pipe(up_reader, writer, False))

        def run():
            self.loop = asyncio.new_event_loop()
            server = self.loop.run_until_complete(asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx))
            self.port = server.sockets[0].getsockname()[1]
            ready.set()
            self.loop.run_forever()
            server.close()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        ready.wait(10)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


def test_endpoint_over_https_with_extra_headers_and_a_checked_token(no_leftovers):
    tmp = no_leftovers
    key, cert = _self_signed(tmp)
    spec_path = make_project(tmp / "proj", spec_overrides={
        "replay": {"warmup_requests": 5, "headers": {"X-Tenant": "blue-team"}, "ca_file": str(cert)}})
    p = in_process(spec_path)
    exported = export_model(p.spec, p.model, p.rows, p.base, tmp / "run" / "export")
    archive = build_archive(p.spec, ArchiveConfig(work_dir=tmp / "run" / "archive"), p.plan.handler, exported,
                            p.base.input_shape)
    with serve_model(p.spec, ServeConfig(run_dir=tmp / "run", mar_path=archive.mar_path,
                                         startup_timeout_s=90)) as server:
        proxy = _TlsProxy(key, cert, int(server.inference_url.rsplit(":", 1)[1]))
        try:
            url = f"https://127.0.0.1:{proxy.port}"
            ok = run_validation(RunOptions(spec_path=spec_path, reports_dir=tmp / "reports", endpoint=url,
                                           endpoint_token=server.inference_token, publish=False))
            assert ok.exit_code == 0, ok.report.get("error")
            assert ok.report["stages"]["replay"]["answered"] == 60
            requests_seen = b"".join(proxy.seen).count(b"POST /predictions/tiny")
            assert requests_seen >= 65 and b"".join(proxy.seen).count(b"X-Tenant: blue-team") == requests_seen
            bad = run_validation(RunOptions(spec_path=spec_path, reports_dir=tmp / "reports2", endpoint=url,
                                            endpoint_token="not-the-token", publish=False))
            assert bad.exit_code == 2
            assert "PACKAGE_VALIDATE_TOKEN" in bad.report["error"]["message"]
            assert "baseline" not in bad.report["stages"], "the endpoint is checked before any stage works"
        finally:
            proxy.close()


def test_a_picked_port_taken_before_java_binds_it_is_picked_again(no_leftovers, monkeypatch):
    """Two runs on one machine can pick the same free port; the one that loses the race picks again."""
    import dataclasses
    import socket

    from pipeline.errors import ServerError
    from pipeline.stages import serve as serve_mod
    from pipeline.torchserve.process import pick_ports

    tmp = no_leftovers
    spec_path = make_project(tmp / "proj")
    p = in_process(spec_path)
    exported = export_model(p.spec, p.model, p.rows, p.base, tmp / "run" / "export")
    archive = build_archive(p.spec, ArchiveConfig(work_dir=tmp / "run" / "archive"), p.plan.handler, exported,
                            p.base.input_shape)
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    held = holder.getsockname()[1]
    picks = []

    def racy_pick():  # the first pick hands out a port another program binds before Java does
        ports = pick_ports()
        picks.append(dataclasses.replace(ports, inference=held) if not picks else ports)
        return picks[-1]

    monkeypatch.setattr(serve_mod, "pick_ports", racy_pick)
    monkeypatch.setattr(serve_mod, "check_ports", lambda ports: None)  # the race: free when checked
    try:
        monkeypatch.setattr(serve_mod, "PORT_ATTEMPTS", 1)
        with pytest.raises(ServerError, match=r"could not bind a port: another program holds it \(free ports picked 1 time"):
            with serve_model(p.spec, ServeConfig(run_dir=tmp / "once", mar_path=archive.mar_path,
                                                 startup_timeout_s=90)):
                pass
        monkeypatch.setattr(serve_mod, "PORT_ATTEMPTS", 3)
        picks.clear()
        with serve_model(p.spec, ServeConfig(run_dir=tmp / "run", mar_path=archive.mar_path,
                                             startup_timeout_s=90)) as server:
            assert len(picks) == 2 and str(held) not in server.inference_url
            first = (tmp / "run" / "torchserve" / "logs-attempt1")
            assert "Address already in use" in "".join(f.read_text(errors="replace") for f in first.glob("*.log*")
                                                       if f.is_file()) + (first / "torchserve.out").read_text()
            ok = requests.post(f"{server.inference_url}/predictions/tiny", timeout=10,
                               json={"features": p.rows.features[0].tolist()},
                               headers={"Authorization": f"Bearer {server.inference_token}"})
            assert ok.status_code == 200, ok.text
    finally:
        holder.close()
