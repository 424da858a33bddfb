"""Cooperative cancellation: a check that raises ends a forward pass between layers, and a lock taken through
attnscope.cancel.acquire is released however its block ends and is never taken by a wait that was cancelled."""

import threading

import pytest
import torch

from attnscope import cancel, engine
from attnscope.capture import run_with_capture
from tests.unit.tiny_models import build


class Stopped(Exception):
    pass


def _stop_after(layers: int):
    calls = []

    def check() -> None:
        calls.append(None)
        if len(calls) > layers:
            raise Stopped
    return check, calls


@pytest.mark.parametrize("run", [run_with_capture, engine.run], ids=["capture", "engine"])
def test_a_check_that_raises_ends_the_forward_pass_at_the_next_layer(run):
    model = build("llama")
    ids = torch.randint(0, 50, (1, 12))
    check, calls = _stop_after(1)
    with cancel.checking(check), pytest.raises(Stopped):
        run(model, ids)
    assert len(calls) == 2  # layer 0 ran, layer 1 found the request and went no further
    full = run(model, ids)  # the model is left as it was: the next pass runs every layer
    assert len(full.layers if hasattr(full, "layers") else full.head_stats) == model.config.num_hidden_layers


def test_checks_belong_to_their_block_and_their_thread():
    seen = []
    with cancel.checking(lambda: seen.append("outer")):
        with cancel.checking(lambda: seen.append("inner")):
            cancel.checkpoint()
        cancel.checkpoint()
        other = threading.Thread(target=cancel.checkpoint)
        other.start()
        other.join()
    cancel.checkpoint()
    assert seen == ["outer", "inner", "outer"]


def test_the_lock_is_released_whatever_ends_the_block():
    lock = threading.Lock()
    with pytest.raises(Stopped), cancel.acquire(lock):
        raise Stopped
    assert not lock.locked()
    with pytest.raises(KeyboardInterrupt), cancel.acquire(lock):  # BaseException, as Streamlit's Stop and Rerun are
        raise KeyboardInterrupt
    assert not lock.locked()


def test_a_cancelled_wait_leaves_the_queue_without_taking_the_lock():
    lock = threading.Lock()
    lock.acquire()  # another session's forward pass
    check, calls = _stop_after(3)
    with cancel.checking(check), pytest.raises(Stopped):
        with cancel.acquire(lock):
            pytest.fail("the block must not run while another holds the lock")
    assert len(calls) == 4  # three steps of the wait, then the check that ended it
    lock.release()  # the holder finishes: nobody else holds it now
    assert lock.acquire(blocking=False)
    lock.release()


def test_a_wait_ends_when_the_holder_lets_go():
    lock = threading.Lock()
    lock.acquire()
    entered = threading.Event()

    def waiter():
        with cancel.acquire(lock):
            entered.set()
    thread = threading.Thread(target=waiter)
    thread.start()
    lock.release()
    thread.join(timeout=10)
    assert entered.is_set() and not lock.locked()
