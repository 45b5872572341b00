from pipeline.bench import parse_ab

AB_STDOUT = """
Concurrency Level:      16
Time taken for tests:   2.001 seconds
Complete requests:      2000
Failed requests:        3
Non-2xx responses:      2
Keep-Alive requests:    2000
Requests per second:    999.53 [#/sec] (mean)
Time per request:       16.008 [ms] (mean)
"""
AB_CSV = "Percentage served,Time in ms\n0,0.412\n50,14.979\n90,19.001\n99,25.500\n100,40.000\n"


def test_parse_ab_reads_throughput_failures_and_float_percentiles():
    r = parse_ab(AB_STDOUT, AB_CSV)
    assert r == {"rps": 999.53, "failed": 3, "non_2xx": 2, "p50": 14.979, "p90": 19.001, "p99": 25.5}


def test_parse_ab_rejects_unexpected_output():
    import pytest

    with pytest.raises(ValueError, match="unexpected ab output"):
        parse_ab("ab: invalid URL", "")
