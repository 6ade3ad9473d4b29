"""The journal: every logging call on disk as it is taken, replayed exactly once (nothing the
store has already, nothing after the step a resume starts from), a cut last line dropped
and named, a live run's journal left alone, and `ganflow sync`."""

import json

import mlflow
from mlflow import MlflowClient
from PIL import Image

from ganflow import journal
from ganflow.journal import Journal


def a_run(name="journal"):
    mlflow.set_experiment(name)
    with mlflow.start_run() as run:
        pass
    return run.info.run_id


def written(folder, run_id, calls, uri="sqlite:///mlflow.db"):
    """A journal of ``calls`` left as a killed process leaves it: nothing marked delivered."""
    writer = Journal(folder, run_id, uri)
    for call in calls:
        writer.append(call)
    writer.close()
    return folder / journal.NAME


def picture(path):
    Image.new("L", (8, 8), 128).save(path)
    return str(path)


def test_replay_sends_what_the_store_lacks_exactly_once(workdir):
    run_id = a_run()
    client = MlflowClient()
    # What the killed process had delivered before it died: window 1, the grid at step 0.
    client.log_metric(run_id, "d_loss", 0.5, step=1)
    grid = picture(workdir / "epoch_0000.png")
    client.log_image(run_id, Image.open(grid), key="samples", step=0)
    path = written(workdir / run_id, run_id, [
        ("metrics", [["d_loss", 0.5, 1000, 1], ["g_loss", 2.0, 1000, 1]]),
        ("image", grid, "samples", 0, 1000),
        ("metrics", [["d_loss", 0.4, 2000, 2]]),
        ("image", picture(workdir / "epoch_0001.png"), "samples", 2, 2000),
        ("tags", {"note": "kept"}),
        ("artifact", picture(workdir / "samples.png"), None),
    ])
    assert journal.waiting(path.parent)

    replayed = journal.replay(path.parent, run_id, client)
    assert (replayed.sent, replayed.already, replayed.dropped) == (5, 1, 0)
    assert replayed.line() == (f"Journal of run {run_id}: 5 logging calls delivered, "
                               "1 already in the store")
    assert sorted((m.step, m.value) for m in client.get_metric_history(run_id, "d_loss")) == \
        [(1, 0.5), (2, 0.4)]  # step 1 once, though the journal had it too
    assert [m.step for m in client.get_metric_history(run_id, "g_loss")] == [1]
    images = [f.path for f in client.list_artifacts(run_id, "images") if f.path.endswith(".png")]
    assert sorted(name.split("+step+")[1].split("+")[0] for name in images) == ["0", "2"]
    assert client.get_run(run_id).data.tags["note"] == "kept"
    assert [f.path for f in client.list_artifacts(run_id) if not f.is_dir] == ["samples.png"]
    assert not path.exists() and journal.replay(path.parent, run_id, client) is None


def test_a_resume_replays_up_to_its_checkpoint_and_leaves_the_rest_to_training(workdir):
    run_id = a_run()
    path = written(workdir / run_id, run_id, [
        ("metrics", [["d_loss", 0.5, 1000, step]]) for step in range(1, 11)])
    replayed = journal.replay(path.parent, run_id, MlflowClient(), until_step=6)
    assert (replayed.sent, replayed.later) == (6, 4)
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "d_loss")] == \
        list(range(1, 7))


def test_what_was_delivered_is_not_sent_again_and_a_cut_last_line_is_dropped(workdir):
    run_id = a_run()
    path = written(workdir / run_id, run_id, [
        ("metrics", [["d_loss", float(step), 1000, step]]) for step in range(1, 6)])
    (path.parent / journal.DELIVERED).write_text("2")  # the outbox had sent two
    text = path.read_text()
    path.write_text(text[: -len(text.splitlines()[-1]) // 2 - 1])  # the kill landed mid-line
    replayed = journal.replay(path.parent, run_id, MlflowClient())
    assert (replayed.sent, replayed.dropped) == (2, 1)  # steps 3 and 4; step 5 was cut
    assert "1 dropped (its last line was cut short (" in replayed.line()
    assert [m.step for m in MlflowClient().get_metric_history(run_id, "d_loss")] == [3, 4]


def test_a_live_run_s_journal_is_left_alone(workdir):
    run_id = a_run()
    writer = Journal(workdir / run_id, run_id, "u")
    writer.append(("metrics", [["d_loss", 0.5, 1000, 1]]))
    assert journal.replay(workdir / run_id, run_id, MlflowClient()) is None
    assert journal.waiting(workdir / run_id)
    writer.close()


def test_a_file_gone_is_named_and_the_rest_delivered(workdir):
    run_id = a_run()
    path = written(workdir / run_id, run_id, [
        ("artifact", str(workdir / "gone.gif"), None), ("tags", {"a": "1"})])
    replayed = journal.replay(path.parent, run_id, MlflowClient())
    assert (replayed.sent, replayed.dropped) == (1, 1)
    assert replayed.why == (f"{workdir / 'gone.gif'} is gone",)


def test_ganflow_sync_sends_every_waiting_journal_to_its_own_store(cli, workdir):
    uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    first, second = a_run(), a_run()
    for run_id in (first, second):
        written(workdir / "ganflow-runs" / run_id, run_id,
                [("metrics", [["d_loss", 0.5, 1000, 3]])], uri=uri)
    mlflow.set_tracking_uri(None)  # sync finds the store in the journal
    result = cli("sync", first)
    assert result.exit_code == 0, result.output
    assert result.stdout == f"Journal of run {first}: 1 logging calls delivered\n"
    result = cli("sync")
    assert result.stdout == f"Journal of run {second}: 1 logging calls delivered\n"
    assert cli("sync").stdout.startswith("Nothing to send: no run in ganflow-runs")
    for run_id in (first, second):
        assert [m.step for m in MlflowClient(uri).get_metric_history(run_id, "d_loss")] == [3]
    missing = cli("sync", "no-such-run")
    assert missing.exit_code == 2
    assert missing.stderr == "Error: no folder ganflow-runs/no-such-run: pass the run's " \
        "--output-dir\n"


def test_the_journal_names_its_run_and_store_first(workdir):
    path = written(workdir / "r", "r", [("tags", {"a": "1"})], uri="http://127.0.0.1:5000")
    assert json.loads(path.read_text().splitlines()[0]) == {
        "journal": 1, "run_id": "r", "tracking_uri": "http://127.0.0.1:5000"}


def test_the_next_run_in_the_same_folder_delivers_what_a_killed_one_left(cli, workdir):
    from conftest import TINY

    uri = f"sqlite:///{workdir}/mlflow.db"
    mlflow.set_tracking_uri(uri)
    killed, elsewhere = a_run(), a_run()
    written(workdir / "ganflow-runs" / killed, killed,
            [("metrics", [["d_loss", 0.5, 1000, 7]])], uri=uri)
    written(workdir / "ganflow-runs" / elsewhere, elsewhere,
            [("metrics", [["d_loss", 0.5, 1000, 7]])], uri="http://127.0.0.1:1")
    result = cli("run", *TINY, "--eval-every", "0", "--no-register")
    assert result.exit_code == 0, result.output
    assert f"Journal of run {killed}: 1 logging calls delivered\n" in result.stderr
    assert (f"Run {elsewhere} left logging calls for http://127.0.0.1:1 in "
            f"ganflow-runs/{elsewhere}/journal.jsonl: ganflow sync {elsewhere} --output-dir "
            "ganflow-runs sends them") in result.stderr
    assert [m.step for m in MlflowClient(uri).get_metric_history(killed, "d_loss")] == [7]
    assert journal.waiting(workdir / "ganflow-runs" / elsewhere)  # another store's: kept


def test_a_new_journal_starts_its_own_count_and_never_overwrites_one_waiting(workdir):
    folder = workdir / "r"
    folder.mkdir()
    (folder / journal.DELIVERED).write_text("5")  # left by a journal that went before
    writer = Journal(folder, "r", "u")
    assert not (folder / journal.DELIVERED).exists()
    writer.append(("tags", {"a": "1"}))
    writer.close()
    try:
        Journal(folder, "r", "u")
    except BlockingIOError as exc:
        assert "holds calls not delivered yet" in str(exc)
    else:
        raise AssertionError("a journal with calls waiting was opened again")


def test_a_journal_whose_only_undelivered_line_was_cut_is_replayed_and_reported(workdir):
    run_id = a_run()
    path = written(workdir / run_id, run_id, [("tags", {"a": "1"})])
    (path.parent / journal.DELIVERED).write_text("1")
    with open(path, "a") as handle:
        handle.write('["metrics", [["d_lo')  # the kill landed mid-line
    assert journal.waiting(path.parent)
    replayed = journal.replay(path.parent, run_id, MlflowClient())
    assert (replayed.sent, replayed.dropped) == (0, 1)
    assert "its last line was cut short (19 characters)" in replayed.line()
    assert not path.exists()
