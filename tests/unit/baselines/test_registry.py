from __future__ import annotations

import pytest

from ssfilter.baselines import baseline_names, build_baseline, register_baseline
from ssfilter.baselines.patchcore import PatchCore, PatchCoreConfig
from ssfilter.baselines.registry import BASELINES
from ssfilter.baselines.softpatch import SoftPatch, SoftPatchConfig
from ssfilter.models.encoders import build_encoder


def test_registered_baselines_build_with_their_defaults() -> None:
    assert baseline_names()[:2] == ["patchcore", "softpatch"]
    encoder = build_encoder("tiny_vit", allow_random=True)
    pc = build_baseline("patchcore", encoder, crop=32)
    sp = build_baseline("softpatch", encoder, crop=32)
    assert type(pc) is PatchCore and pc.cfg == PatchCoreConfig(local_pool=3) and pc.crop == 32
    assert type(sp) is SoftPatch and sp.cfg == SoftPatchConfig(local_pool=3)
    assert sp.cfg.threshold == 0.15 and sp.cfg.reweight is False
    with pytest.raises(ValueError, match="unknown baseline 'resnet'"):
        build_baseline("resnet", encoder, crop=32)


def test_register_baseline_decorator() -> None:
    @register_baseline("dummy-test")
    class Dummy:
        def __init__(self, encoder: object, crop: int) -> None:
            self.encoder, self.crop = encoder, crop

    try:
        assert "dummy-test" in baseline_names()
        built = build_baseline("dummy-test", "enc", crop=8)  # type: ignore[arg-type]
        assert isinstance(built, Dummy) and built.crop == 8
        assert register_baseline("dummy-test")(Dummy) is Dummy  # re-registering the same class is fine
        with pytest.raises(ValueError, match="already registered"):
            register_baseline("dummy-test")(type("Other", (), {}))
    finally:
        BASELINES.pop("dummy-test", None)
    for bad in ("", "Upper", "a+filter", "a,b"):
        with pytest.raises(ValueError, match="lower case"):
            register_baseline(bad)
