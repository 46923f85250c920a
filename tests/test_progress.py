"""Where a comparison stands: the plan of its epochs, the time left, what is shown and kept."""
import struct

from mmcompress.app import plan as app_plan, progress
from mmcompress.train import loop

RECORD = loop.EpochRecord(epoch=0, train_loss=[1.0, 2.0], val_loss=[1.0, 2.0],
                          val_metric=[0.5, 0.25], task_weights=[0.5, 0.5], score=1.5)


def test_the_plan_counts_every_training_stage_of_every_run(tiny_config):
  config = tiny_config(seeds=(0, 3))  # pretrain 2, reweight 1, retrain 2; methods equal, minmax
  plan = progress.planned_epochs(app_plan.comparison(config))
  assert plan["seed3/dense"] == {"pretrain": 2}
  assert plan["seed0/minmax"] == {"reweight": 1, "retrain": 2}  # pretraining is shared
  assert len(plan) == 2 * 3
  unshared = progress.planned_epochs(app_plan.comparison(tiny_config(share_pretraining=False)))
  assert unshared["seed0/equal"] == {"pretrain": 2, "reweight": 1, "retrain": 2}


def test_the_status_counts_epochs_done_and_estimates_the_rest_at_this_calls_pace(tmp_path,
                                                                                  capsys):
  now = [100.0]
  plan = {"seed0/dense": {"pretrain": 4}, "seed0/minmax": {"reweight": 2, "retrain": 4}}
  shown = progress.Progress(False, str(tmp_path), ("a", "b"), True, plan, epoch_lines=False,
                            clock=lambda: now[0])
  assert shown.status() == "0 % of 10 epochs, 0s elapsed"
  shown("seed0/dense", "pretrain", 0, RECORD)
  now[0] += 10
  # A resumed stage: its first epoch shown is its third; the two before count as done.
  shown("seed0/dense", "pretrain", 2, RECORD)
  assert shown.done == 3
  # 3 of 10 done; two epochs trained by this call in 10 s: 7 more take about 35 s.
  assert shown.status() == "30 % of 10 epochs, 10s elapsed, about 35s left"
  shown.run_done("seed0/dense", "seed 0 dense: test a 0.500")  # its last epoch: done
  out = capsys.readouterr().out
  assert out.splitlines() == ["seed 0 dense: test a 0.500 [40 % of 10 epochs, 10s elapsed, "
                              "about 30s left]"]  # no epoch lines
  log = (tmp_path / "progress.log").read_text().splitlines()
  assert len(log) == 3 and "pretrain epoch   3  val 0.500 0.250" in log[1]
  shown.seed_done(0)  # e.g. a dense reference that diverged: the seed's runs are over
  assert shown.status() == "100 % of 10 epochs, 10s elapsed"
  shown.close()


def test_durations_read_as_a_person_says_them():
  assert [progress.duration(s) for s in (0.4, 59, 61, 3599, 7260)] == [
      "0s", "59s", "1m01s", "59m59s", "2h01m"]


def test_a_label_goes_before_every_printed_line_but_not_into_the_log(tmp_path, capsys):
  plan = {"seed0/dense": {"pretrain": 1}}
  shown = progress.Progress(False, str(tmp_path), ("a", "b"), True, plan, label="mixed-100x")
  shown("seed0/dense", "pretrain", 0, RECORD)
  shown.run_done("seed0/dense", "seed 0 dense: test a 0.500")
  out = capsys.readouterr().out.splitlines()
  assert len(out) == 2 and all(line.startswith("[mixed-100x] ") for line in out)
  log = (tmp_path / "progress.log").read_text().splitlines()
  assert out == [f"[mixed-100x] {line}" for line in log]
  shown.close()


def test_a_finished_runs_tensorboard_writer_is_closed_with_its_threads(tmp_path):
  import threading  # pylint: disable=import-outside-toplevel
  plan = {f"seed{s}/dense": {"pretrain": 1} for s in range(20)}
  shown = progress.Progress(True, str(tmp_path), ("a", "b"), True, plan)
  before = threading.active_count()
  for s in range(20):
    shown(f"seed{s}/dense", "pretrain", 0, RECORD)
    shown.run_done(f"seed{s}/dense", f"seed {s} dense")
  assert threading.active_count() <= before + 2  # not two threads per finished run
  events = list(tmp_path.glob("tensorboard/seed*/dense/events.*"))
  assert len(events) == 20 and all(e.stat().st_size > 0 for e in events)  # written
  shown.close()


def test_tensorboard_reads_each_epochs_scalars_from_one_event_at_that_epoch(tmp_path):
  plan = {"seed0/equal": {"retrain": 3}}
  shown = progress.Progress(True, str(tmp_path), ("a", "b c"), True, plan)
  shown("seed0/equal", "retrain", 2, RECORD)
  shown.close()
  (path,) = tmp_path.glob("tensorboard/seed0/equal/events.*")
  with_values = [event for event in _events(path) if event.summary.value]
  assert len(with_values) == 1 and with_values[0].step == 2
  assert sorted((v.tag, v.simple_value) for v in with_values[0].summary.value) == sorted(
      (f"retrain/{name}/{task}", value)  # "b c" cleaned as tensorboardX cleans a tag
      for name, row in (("train_loss", RECORD.train_loss), ("val_metric", RECORD.val_metric),
                        ("task_weight", RECORD.task_weights))
      for task, value in zip(("a", "b_c"), row))


def _events(path):
  """The events of a TensorBoard event file, read by hand: TFRecord framing (a little-endian
  uint64 length, a 4-byte checksum, the data, a 4-byte checksum) around Event protos."""
  from tensorboardX.proto import event_pb2  # pylint: disable=import-outside-toplevel
  data, events, at = path.read_bytes(), [], 0
  while at < len(data):
    (length,) = struct.unpack("<Q", data[at:at + 8])
    event = event_pb2.Event()
    event.ParseFromString(data[at + 12:at + 12 + length])
    events.append(event)
    at += 12 + length + 4
  assert at == len(data)
  return events
