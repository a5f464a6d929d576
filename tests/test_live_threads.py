"""cityviz.ui.live.one_intra_op_thread: explanations run single-threaded, and the setting in force
outside comes back, however many sessions (threads) explain at once and however a call ends."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from cityviz.cam import Explainer
from cityviz.models.archs import build_model
from cityviz.ui import live as ul


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_inside_the_block_torch_uses_one_thread_and_the_setting_comes_back(two_threads):
    with ul.one_intra_op_thread():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2


def test_an_error_inside_the_block_still_restores_the_setting(two_threads):
    with pytest.raises(RuntimeError, match="boom"), ul.one_intra_op_thread():
        raise RuntimeError("boom")
    assert torch.get_num_threads() == 2


def test_many_sessions_at_once_each_run_single_threaded_and_the_last_restores(two_threads):
    n = 8
    inside: list[int] = []
    entered, release = threading.Barrier(n), threading.Event()
    failed: list[BaseException] = []

    def session(k: int) -> None:
        try:
            with ul.one_intra_op_thread():
                entered.wait(timeout=30)  # all n inside at the same time
                x = torch.randn(64, 64) @ torch.randn(64, 64)  # a real op in this thread
                assert torch.isfinite(x).all()
                inside.append(torch.get_num_threads())
                if k < n - 1:
                    release.wait(timeout=30)
                else:
                    release.set()
        except BaseException as exc:  # pragma: no cover - reported below
            failed.append(exc)

    threads = [threading.Thread(target=session, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not failed and len(inside) == n
    assert inside == [1] * n
    assert ul._threads_active == 0
    assert torch.get_num_threads() == 2  # this thread's setting and the default for new ones
    seen: list[int] = []
    fresh = threading.Thread(target=lambda: seen.append(torch.get_num_threads()))
    fresh.start()
    fresh.join()
    assert seen == [2]


def test_predict_explains_single_threaded(two_threads, monkeypatch):
    counts: list[int] = []
    real = ul.compute_cams

    def spy(*args, **kwargs):
        counts.append(torch.get_num_threads())
        return real(*args, **kwargs)

    monkeypatch.setattr(ul, "compute_cams", spy)
    torch.manual_seed(0)
    model = build_model("simple", 2)
    image = np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8)
    result = ul.predict(Explainer(model, "simple"), image, 32, 24, ["a", "b"])
    assert counts == [1]
    assert result.mask.shape == (24, 24) and result.city in ("a", "b")
    assert torch.get_num_threads() == 2
