"""Validation against queueing theory: M/M/c mean queue wait vs the Erlang C formula."""
from __future__ import annotations

import math

import pytest

from sim import compare, erlang_c, mmc_mean_wait, parse_scenario


def mmc(servers: int, load: float, duration: float, warmup: float):
    return parse_scenario({
        "name": f"mm{servers}", "seed": 101, "duration": duration, "warmup": warmup,
        "service_noise": 0.0, "policy": "fastest",
        "nodes": [{"count": servers, "gpu": "RTX 4090", "models": ["llama2:7b"]}],
        "workload": [{"arrival": {"process": "poisson", "rate": load * servers},
                      "service_time": {"dist": "exponential", "mean": 1.0}}],
    })


def test_erlang_c_known_values():
    assert erlang_c(1, 0.5) == pytest.approx(0.5)  # M/M/1: P(wait) = rho
    assert erlang_c(2, 1.0) == pytest.approx(1 / 3)  # 2 servers, a = 1: 1/3
    assert mmc_mean_wait(1, 0.9, 1.0) == pytest.approx(9.0)  # rho / (mu - lambda)
    assert erlang_c(8, 0.0) == 0.0


# (servers, load, seconds of arrivals, warmup, replications): each run spans many
# relaxation times 1 / (c mu (1 - sqrt(rho))^2) of the queue, so the replication
# means are nearly unbiased and independent.
CASES = [(1, 0.5, 3000.0, 200.0, 8), (2, 0.8, 4000.0, 400.0, 8),
         (4, 0.9, 4000.0, 600.0, 8), (16, 0.95, 3000.0, 500.0, 8)]


@pytest.mark.parametrize("servers,load,duration,warmup,replications", CASES)
def test_mmc_mean_wait_matches_erlang_c(servers, load, duration, warmup, replications):
    [config] = compare(mmc(servers, load, duration, warmup), replications=replications)
    mean, half_width = config.summary["queue_wait"]["mean"], config.ci95["queue_wait"]["mean"]
    theory = mmc_mean_wait(servers, load * servers, 1.0)
    assert half_width < 0.3 * theory  # the interval is informative, not vacuous
    assert abs(mean - theory) <= half_width, (mean, half_width, theory)
    # No cold loads, no latency, no noise: sojourn = wait + Exp(1) service.
    assert config.summary["latency"]["mean"] == pytest.approx(mean + 1.0, abs=0.05)
    assert config.summary["utilization"]["overall"] == pytest.approx(load, abs=0.02)
    assert math.isclose(config.summary["little"]["error_pct"], 0.0, abs_tol=1e-6)
