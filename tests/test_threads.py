"""The BLAS thread policy: explicit counts, the environment, cores and load, and the CLI option."""

from __future__ import annotations

import argparse

import pytest

from netdef import threads

# each test starts without a policy applied and restores the library's count afterwards
pytestmark = pytest.mark.usefixtures("fresh_thread_policy")


def test_explicit_count_is_applied_and_fixed(monkeypatch):
    assert threads.apply_policy(1) == 1
    assert threads.current() == 1
    assert threads._library_threads() == 1 or threads._controller() is None
    monkeypatch.setattr(threads, "_auto_count", lambda: (7, False))
    monkeypatch.setattr(threads._state, "next_check", 0.0)
    threads.refresh()
    assert threads.current() == 1
    assert "fixed" in threads.describe()


def test_environment_variable_fixes_the_count(monkeypatch):
    monkeypatch.setenv(threads.ENV_VAR, "1")
    assert threads.apply_policy() == 1
    assert threads._state.fixed


@pytest.mark.parametrize("value", ["0", "-2", "two"])
def test_bad_environment_value_is_named(monkeypatch, value):
    monkeypatch.setenv(threads.ENV_VAR, value)
    with pytest.raises(ValueError, match=f"NETDEF_NUM_THREADS must be a positive integer. Received: '{value}'"):
        threads.apply_policy()


def test_bad_count_is_rejected():
    with pytest.raises(ValueError, match="at least 1. Received: 0"):
        threads.apply_policy(0)


def test_blas_variable_leaves_the_library_alone(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    threads.apply_policy()
    assert threads.current() is None
    assert "leaves it alone" in threads.describe()


def test_automatic_count_takes_the_free_cores_or_all_when_none_is_free(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 8)
    busy = {"n": 3}
    monkeypatch.setattr(threads, "busy_cores", lambda samples=3: busy["n"])
    assert threads.auto_threads() == 5
    busy["n"] = 7
    assert threads.auto_threads() == 1
    # every core busy: a thread on each gets its fair slice of it
    for n in (8, 12):
        busy["n"] = n
        assert threads.auto_threads() == 8


def test_onnx_runtime_pools_get_one_thread_while_others_keep_every_core_busy(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 2)
    busy = {"n": 2}
    monkeypatch.setattr(threads, "busy_cores", lambda samples=3: busy["n"])
    monkeypatch.setattr(threads._state, "fixed", False)
    monkeypatch.setattr(threads._state, "next_check", 0.0)
    threads.refresh()
    assert (threads.count(), threads.pool_threads()) == (2, 1)
    busy["n"] = 0  # quiet again: the pools get the count too
    monkeypatch.setattr(threads._state, "next_check", 0.0)
    threads.refresh()
    assert (threads.count(), threads.pool_threads()) == (2, 2)
    busy["n"] = 2
    monkeypatch.setattr(threads._state, "next_check", 0.0)
    threads.refresh()
    assert threads.pool_threads() == 1
    assert "every core busy, so ONNX Runtime's pools run 1" in threads.describe()
    threads.apply_policy(2)  # a count the user fixed goes to the pools as it is
    assert (threads.count(), threads.pool_threads()) == (2, 2)


def test_refresh_follows_the_load_but_not_more_often_than_the_interval(monkeypatch):
    load = {"n": 2}
    monkeypatch.setattr(threads, "_auto_count", lambda: (load["n"], False))
    threads.refresh()  # the first call applies the policy
    assert threads.current() == 2
    load["n"] = 1
    threads.refresh()  # within the interval: unchanged
    assert threads.current() == 2
    monkeypatch.setattr(threads._state, "next_check", 0.0)
    threads.refresh()
    assert threads.current() == 1


def test_first_refresh_with_a_bad_variable_warns_and_goes_on(monkeypatch, caplog):
    monkeypatch.setenv(threads.ENV_VAR, "many")
    monkeypatch.setattr(threads, "_auto_count", lambda: (1, False))
    threads.refresh()
    assert threads.current() == 1
    assert "NETDEF_NUM_THREADS" in caplog.text


def test_cgroup_quota_v2_and_v1(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_quota_cores(str(tmp_path)) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_quota_cores(str(tmp_path)) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert threads.cgroup_quota_cores(str(v1)) == 2.0
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    assert threads.cgroup_quota_cores(str(v1)) is None


def test_available_cores_is_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(threads, "_affinity_cores", lambda: 16)
    monkeypatch.setattr(threads, "cgroup_quota_cores", lambda: 2.5)
    assert threads.available_cores() == 3
    monkeypatch.setattr(threads, "cgroup_quota_cores", lambda: None)
    assert threads.available_cores() == 16


def test_busy_cores_is_never_negative():
    assert threads.busy_cores() >= 0


def test_cli_option_applies_the_count_and_rejects_zero():
    p = argparse.ArgumentParser()
    p.add_argument("--threads", type=int, action=threads.ThreadsAction)
    assert p.parse_args(["--threads", "1"]).threads == 1
    assert threads.current() == 1 and threads._state.fixed
    with pytest.raises(SystemExit):
        p.parse_args(["--threads", "0"])


def test_a_blas_cap_keeps_the_count_for_other_pools():
    threads.apply_policy(2)
    threads.cap_blas(1)
    assert threads.current() == 2 and threads.count() == 2
    if threads._controller() is not None and threads._controller().lib_controllers:
        assert threads._library_threads() == 1
        assert "capped at 1" in threads.describe()
        threads.apply_policy(3)  # a later count leaves BLAS capped
        assert threads._library_threads() == 1 and threads.count() == 3


def test_count_follows_the_blas_variable_when_the_user_set_one(monkeypatch):
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    threads.apply_policy()
    assert threads.current() is None
    assert threads.count() == threads._library_threads()


# --- run_parts ----------------------------------------------------------------------------
def two_threads(monkeypatch):
    monkeypatch.setattr(threads._state, "current", 2)
    monkeypatch.setattr(threads._state, "fixed", True)


def test_run_parts_keeps_order_and_uses_a_second_thread(monkeypatch):
    import threading

    two_threads(monkeypatch)
    both_started = threading.Barrier(2, timeout=10)  # each thread holds its first part until the other has one
    seen = []

    def fn(share):
        out = []
        for i, p in enumerate(share):
            seen.append((threading.get_ident(), threads.count(), p))
            if i == 0:
                both_started.wait()
            out.append(p * 10)
        return out

    assert threads.run_parts(fn, [1, 2, 3, 4, 5]) == [10, 20, 30, 40, 50]
    assert sorted(p for _, _, p in seen) == [1, 2, 3, 4, 5]  # every part once
    assert len({ident for ident, _, _ in seen}) == 2
    assert {c for _, c, _ in seen} == {1}  # each thread sees one thread for its own pools
    assert threads.count() == 2  # the caller's count is back after its share


class _LateHelpers:
    """An executor whose helpers start only when ``start`` is called (a scheduler holding them back)."""

    def __init__(self):
        self.waiting = []

    def submit(self, fn, *args):
        self.waiting.append((fn, args))

    def start(self):
        for fn, args in self.waiting:
            fn(*args)


def test_run_parts_does_not_wait_for_a_helper_that_has_not_started(monkeypatch):
    import threading

    two_threads(monkeypatch)
    late = _LateHelpers()
    monkeypatch.setattr(threads, "_executor", lambda size: late)
    calls = []

    def fn(share):
        calls.append(threading.get_ident())
        return [p * 10 for p in share]

    assert threads.run_parts(fn, [1, 2, 3, 4]) == [10, 20, 30, 40]  # all on this thread
    assert calls == [threading.get_ident()]
    late.start()  # the helper, when it finally runs, finds nothing left and does not call fn
    assert calls == [threading.get_ident()]


def test_run_parts_results_are_none_when_fn_returns_none(monkeypatch):
    two_threads(monkeypatch)
    done = []

    def fn(share):
        done.extend(share)

    assert threads.run_parts(fn, [1, 2, 3]) == [None, None, None]
    assert sorted(done) == [1, 2, 3]


def test_run_parts_runs_here_with_one_thread_or_one_part(monkeypatch):
    import threading

    here = threading.get_ident()
    idents = []

    def fn(share):
        idents.append(threading.get_ident())
        return list(share)

    monkeypatch.setattr(threads._state, "current", 1)
    monkeypatch.setattr(threads._state, "fixed", True)
    assert threads.run_parts(fn, [1, 2, 3]) == [1, 2, 3]
    two_threads(monkeypatch)
    assert threads.run_parts(fn, [7]) == [7]
    assert threads.run_parts(fn, []) == []
    assert set(idents) == {here}


def test_run_parts_raises_an_error_after_the_parts_taken_end_and_takes_no_more(monkeypatch):
    import threading

    two_threads(monkeypatch)
    done = []

    def fn(share):
        for p in share:
            if p == 2:
                raise ValueError("part 2 failed")
            done.append(p)
        return done

    late = _LateHelpers()
    monkeypatch.setattr(threads, "_executor", lambda size: late)
    with pytest.raises(ValueError, match="part 2 failed"):
        threads.run_parts(fn, [1, 2, 3, 4])
    assert done == [1]  # parts 3 and 4 were never taken
    late.start()
    assert done == [1]
    monkeypatch.undo()
    two_threads(monkeypatch)
    # a part failing on a helper thread: raised here too, after the helper's part has ended
    helper_failed = threading.Event()

    def fails_on_a_helper(share):
        for _ in share:
            if threading.current_thread() is not threading.main_thread():
                helper_failed.set()
                raise ValueError("a helper failed")
            helper_failed.wait(10)
        return None

    with pytest.raises(ValueError, match="a helper failed"):
        threads.run_parts(fails_on_a_helper, [1, 2])


def test_busy_cores_is_the_smaller_of_a_snapshot_and_the_average_since_the_last_sample(monkeypatch):
    clock = {"t": 100.0}
    cpu = {"machine": 50.0, "own": 10.0}
    snap = {"n": 7}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 16)  # idle cores to spare throughout
    monkeypatch.setattr(threads, "_cpu_seconds", lambda: (cpu["machine"], cpu["own"]))
    monkeypatch.setattr(threads, "_busy_sample", lambda: snap["n"])
    assert threads.busy_cores() == 7  # no window yet: the snapshot

    def later(seconds, machine, own):
        clock["t"] += seconds
        cpu["machine"] += machine
        cpu["own"] += own

    # 2 s on: the machine worked 5 s, this process 1.2 s of it -> others kept 1.9 cores busy
    later(2.0, 5.0, 1.2)
    assert threads.busy_cores() == 2
    # within MIN_WINDOW of the last sample: the snapshot alone, and the window keeps its start
    later(threads.MIN_WINDOW / 2, 0.0, 0.0)
    assert threads.busy_cores() == 7
    # only this process worked since: a snapshot that caught a passing task does not count
    later(2.0, 4.0, 4.0)
    assert threads.busy_cores() == 0
    # others worked 2 cores' worth on average, but in bursts: nobody runs now
    snap["n"] = 0
    later(2.0, 6.0, 2.0)
    assert threads.busy_cores() == 0
    # a process that keeps a core busy is in both
    snap["n"] = 1
    later(2.0, 3.0, 1.0)
    assert threads.busy_cores() == 1


def test_busy_cores_trusts_the_snapshot_when_the_machine_had_no_idle_time(monkeypatch):
    clock = {"t": 100.0}
    cpu = {"machine": 50.0, "own": 10.0}
    monkeypatch.setattr(threads.time, "monotonic", lambda: clock["t"])
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 2)
    monkeypatch.setattr(threads, "_cpu_seconds", lambda: (cpu["machine"], cpu["own"]))
    monkeypatch.setattr(threads, "_busy_sample", lambda: 2)
    assert threads.busy_cores() == 2

    def later(machine, own):
        clock["t"] += 2.0
        cpu["machine"] += machine
        cpu["own"] += own

    # two cores, both working all the time; two CPU-bound processes got 1.1 cores of them:
    # they would use two, as the snapshot says
    later(4.0, 1.8)
    assert threads.busy_cores() == 2
    # the same share with a quarter of a core idle: what they got is what they wanted
    later(3.4, 1.2)
    assert threads.busy_cores() == 1
    # no idle time, but others had less than half a core: a passing task, not a busy process
    later(4.0, 3.2)
    assert threads.busy_cores() == 0


def test_busy_cores_without_proc_stat_takes_snapshots(monkeypatch):
    monkeypatch.setattr(threads, "_cpu_seconds", lambda: None)
    monkeypatch.setattr(threads, "_busy_sample", lambda: 1)
    assert threads.busy_cores() == 1
    assert threads.busy_cores() == 1


def test_cpu_seconds_reads_this_machine():
    got = threads._cpu_seconds()
    if got is None:
        pytest.skip("no /proc/stat here")
    machine, own = got
    assert machine > 0 and own > 0


def test_even_slices_cover_the_range_in_order_with_lengths_one_apart():
    assert threads.even_slices(10, 3) == [slice(0, 3), slice(3, 6), slice(6, 10)]
    assert threads.even_slices(4, 4) == [slice(i, i + 1) for i in range(4)]
    assert threads.even_slices(0, 2) == [slice(0, 0), slice(0, 0)]


def test_chunk_count_rounds_up_to_the_threads_only_for_big_work(monkeypatch):
    two_threads(monkeypatch)
    big = threads.SPLIT_BYTES
    assert threads.chunk_count(3, big // 4, big) == 1  # under SPLIT_BYTES: as many as the size needs
    assert threads.chunk_count(6, big // 4, big // 2) == 4  # 3 chunks of two items, made 4
    assert threads.chunk_count(3, big // 2, big // 2) == 3  # 3 chunks of one item: no more than the items
    assert threads.chunk_count(4, big, 2 * big) == 2  # 2 items per chunk: 2 chunks, already even
    assert threads.chunk_count(1, 2 * big, big) == 1  # never more chunks than items
    assert threads.chunk_count(0, 100, 100) == 0


def test_a_forked_child_makes_its_own_helpers(monkeypatch):
    import os

    if not hasattr(os, "fork"):
        pytest.skip("no fork on this platform")
    two_threads(monkeypatch)
    assert threads.run_parts(lambda s: [p + 1 for p in s], [1, 2]) == [2, 3]  # the parent's helper exists
    pid = os.fork()
    if pid == 0:  # the child: its helper threads must be new ones
        ok = threads._workers["pool"] is None and threads.run_parts(lambda s: [p + 1 for p in s], [1, 2]) == [2, 3]
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0


def test_run_parts_inside_a_share_runs_on_the_shares_thread(monkeypatch):
    import threading

    two_threads(monkeypatch)

    def inner(share):
        return [threading.get_ident() for _ in share]

    def outer(share):
        here = threading.get_ident()
        return [all(ident == here for ident in threads.run_parts(inner, [1, 2, 3])) for _ in share]

    assert threads.run_parts(outer, [1, 2]) == [True, True]


def test_shares_hold_blas_at_one_thread_and_restore_it(monkeypatch):
    class Lib:
        def __init__(self, n):
            self.num_threads = n

        def set_num_threads(self, n):
            self.num_threads = n

    libs = [Lib(2), Lib(1)]
    monkeypatch.setattr(threads, "_controller", lambda: type("C", (), {"lib_controllers": libs})())
    two_threads(monkeypatch)
    seen = threads.run_parts(lambda share: [[lib.num_threads for lib in libs] for _ in share], [1, 2])
    assert seen == [[1, 1], [1, 1]]
    assert [lib.num_threads for lib in libs] == [2, 1]
    monkeypatch.setattr(threads, "_controller", lambda: None)  # no threadpoolctl: nothing is split
    assert threads.run_parts(lambda share: [sum(1 for _ in share)], [1, 2]) == [2]
