"""What `pip install` reads: the extras pin what the pinned TRL supports (read from the installed metadata)."""

from importlib.metadata import requires

from packaging.requirements import Requirement


def test_the_vllm_extra_is_trls_own_for_the_pinned_trl():
    """TRL 1.16 supports vLLM >=0.22.0,<=0.31.0; its `vllm` extra says so, so ours takes that extra, same TRL range."""
    requirements = [Requirement(r) for r in requires("trl-sgpo")]
    trl = next(r for r in requirements if r.name == "trl" and r.marker is None)
    (extra,) = [r for r in requirements if r.marker is not None and r.marker.evaluate({"extra": "vllm"})]
    assert extra.name == "trl" and extra.extras == {"vllm"} and extra.specifier == trl.specifier
