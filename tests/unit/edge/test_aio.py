

def test_a_started_pool_has_all_its_threads_at_once_and_keeps_that_many():
    import threading

    from tts_runner.edge.aio import started_pool

    def named() -> int:
        return sum(t.name.startswith("counted_") for t in threading.enumerate())

    pool = started_pool(6, "counted")
    assert named() == 6  # before any work
    six = threading.Barrier(6, timeout=60)  # six tasks at once, each on a thread of its own
    assert all(f.result(timeout=60) >= 0 for f in [pool.submit(six.wait) for _ in range(6)])
    assert sum(f.result() for f in [pool.submit(lambda: 1) for _ in range(100)]) == 100
    assert named() == 6
    pool.shutdown(wait=True)
    assert named() == 0
