from pathlib import Path

import pytest

from harness.config import ConfigError, load_routes

GOOD = """
routes:
  - name: dense-baseline
    role: baseline
    model: dense
    base_url: http://127.0.0.1:8000/v1
    api_key_env: DENSE_KEY
    request: {temperature: 0.2, max_tokens: 64, seed: 7}
    max_concurrency: 4
    timeout_s: 30
    prices: {input_per_mtok: 0.5, output_per_mtok: 1.5}
    architecture: dense
    total_params: 1000
    active_params: 1000
  - name: moe-candidate
    role: candidate
    model: moe
    base_url: http://127.0.0.1:8001/v1
    architecture: moe
    num_experts: 8
    active_experts: 2
    capacity_factor: 1.25
"""


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "routes.yaml"
    p.write_text(text)
    return p


def test_good_file_parses_and_snapshot_has_no_secret(tmp_path, monkeypatch):
    monkeypatch.setenv("DENSE_KEY", "sk-secret-value")
    routes = load_routes(write(tmp_path, GOOD))
    assert [r.name for r in routes.routes] == ["dense-baseline", "moe-candidate"]
    assert routes.baseline.name == "dense-baseline"
    dense = routes.routes[0]
    assert dense.api_key() == "sk-secret-value"
    assert "sk-secret-value" not in str(dense.snapshot())
    assert dense.snapshot()["api_key_env"] == "DENSE_KEY"
    assert routes.routes[1].span_attributes() == {
        "routecheck.route": "moe-candidate", "routecheck.role": "candidate", "architecture": "moe",
        "num_experts": 8, "active_experts": 2, "capacity_factor": 1.25,
    }


@pytest.mark.parametrize(
    "edit, expected",
    [
        (("max_concurrency: 4", "max_concurency: 4"), "routes[0].max_concurency (route 'dense-baseline'): unknown key"),
        (("role: candidate", "role: challenger"), "routes[1].role (route 'moe-candidate'): Input should be 'baseline' or 'candidate'"),
        (("    num_experts: 8\n", ""), "routes[1] (route 'moe-candidate'): architecture 'moe' needs 'num_experts' and 'active_experts'"),
        (("    base_url: http://127.0.0.1:8001/v1\n", ""), "routes[1] (route 'moe-candidate'): give exactly one of 'base_url'"),
        (("role: candidate", "role: baseline"), "exactly one route must have role 'baseline'; found 2"),
        (("timeout_s: 30", "timeout_s: -1"), "routes[0].timeout_s (route 'dense-baseline'): Input should be greater than 0"),
        (("seed: 7}", "seed: seven}"), "routes[0].request.seed (route 'dense-baseline'): Input should be a valid integer"),
    ],
)
def test_bad_file_names_file_and_key(tmp_path, edit, expected):
    path = write(tmp_path, GOOD.replace(*edit))
    with pytest.raises(ConfigError) as e:
        load_routes(path)
    assert str(e.value).startswith(f"{path}: ") and expected in str(e.value), str(e.value)


def test_yaml_syntax_error_names_line(tmp_path):
    path = write(tmp_path, "routes:\n  - name: a\n    role: [baseline\n")
    with pytest.raises(ConfigError, match=rf"^{path}:4: not valid YAML"):
        load_routes(path)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read routes file"):
        load_routes(tmp_path / "nope.yaml")


def test_missing_key_env(tmp_path, monkeypatch):
    monkeypatch.delenv("DENSE_KEY", raising=False)
    routes = load_routes(write(tmp_path, GOOD))
    with pytest.raises(ConfigError, match="DENSE_KEY"):
        routes.routes[0].api_key()


def test_live_experts_routes_are_the_default_routes_with_capture():
    """examples/routes-live-experts.yaml (`make demo-live`) differs from routes.yaml only in live
    capture on the MoE route and --no-enable-prefix-caching on both, so its report compares the same
    servers; its checkpoint paths resolve to the same directories."""
    from harness.config import load_routes

    repo = Path(__file__).resolve().parents[1]
    base = {r.name: r for r in load_routes(repo / "routes.yaml").routes}
    live = {r.name: r for r in load_routes(repo / "examples" / "routes-live-experts.yaml").routes}
    assert base.keys() == live.keys()
    for name, r in live.items():
        b = base[name]
        assert Path(r.serve.model).resolve() == Path(b.serve.model).resolve()
        assert r.serve.args == b.serve.args + ["--no-enable-prefix-caching"]
        assert r.expert_capture == (r.architecture == "moe") and not b.expert_capture
        strip = {"serve", "expert_capture"}
        assert r.model_dump(exclude=strip) == b.model_dump(exclude=strip)


def test_extra_body_reaches_the_request_and_cannot_override_ours(tmp_path):
    """request.extra_body: engine-specific fields (vLLM's ignore_eos, ...) sent as they are."""
    from harness.corpus import PromptRecord
    from harness.mirror.runner import _build_body

    text = GOOD.replace("request: {temperature: 0.2, max_tokens: 64, seed: 7}",
                        "request: {temperature: 0.2, max_tokens: 64, seed: 7, extra_body: {ignore_eos: true, min_tokens: 4}}")
    route = load_routes(write(tmp_path, text)).routes[0]
    record = PromptRecord(id="p1", cohort="c", messages=[{"role": "user", "content": "hi"}])
    body = _build_body(route, record, sample=1)
    assert body["ignore_eos"] is True and body["min_tokens"] == 4
    assert (body["model"], body["max_tokens"], body["seed"], body["stream"]) == ("dense", 64, 8, True)
    bad = GOOD.replace("request: {temperature: 0.2, max_tokens: 64, seed: 7}", "request: {extra_body: {model: other, stream: false}}")
    with pytest.raises(ConfigError) as e:
        load_routes(write(tmp_path, bad))
    assert "extra_body" in str(e.value) and "model, stream: set by routecheck" in str(e.value)
