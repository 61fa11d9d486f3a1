"""The Export tab's work (webui.export.actions) on a real LoRA run of the tiny model: the command shown is
the call made, the files and sizes, load and test, and each bad choice refused with its reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch
from transformers import AutoModelForCausalLM

from memfactory.backends.openai_api import OpenAIBackend
from memfactory.cli import build_parser, main
from memfactory.errors import MemFactoryError
from memfactory.paths import presets_dir
from memfactory.tracking.process import free_port
from memfactory.types import ChatPrompt, SamplingParams
from webui.export import actions
from webui.export.actions import ExportRequest

RUN = "lora-run"


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    """A workspace holding one finished 2-step LoRA run of tiny_test (its checkpoint: step-000002)."""
    root = tmp_path_factory.mktemp("export-ws")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MEMFACTORY_WORKSPACE", str(root))
        assert main(["train", str(presets_dir() / "tiny_test.yaml"), "--set", "trainer.lora={r: 4, alpha: 8}",
                     "--set", "trainer.steps=2", "--runs-dir", str(root / "runs"), "--run-id", RUN,
                     "--no-progress"]) == 0
        yield root


def test_runs_and_checkpoints_to_pick(ws):
    assert actions.run_choices() == [RUN]
    assert actions.checkpoint_choices(RUN) == ["step-000002"]
    assert actions.checkpoint_choices("") == [] and actions.checkpoint_choices("gone") == []


def test_the_command_shown_is_the_export_made(ws):
    request = ExportRequest(RUN, "step-000002", "merged", "bfloat16", str(ws / "out" / "merged"))
    shell = request.command(python="python").shell()
    assert shell.startswith("python -m memfactory export ") and "--merge --dtype bfloat16 --out " in shell
    args = build_parser().parse_args(request.argv())  # the real CLI reads the same choices
    assert (args.run, args.merge, args.dtype, args.out, args.force) == (
        str(ws / "runs" / RUN / "checkpoints" / "step-000002"), True, "bfloat16", str(ws / "out" / "merged"), False)
    assert args.db == str(ws / "runs" / "memfactory.db")

    written = request.export()
    assert written == ws / "out" / "merged"
    frame = actions.files_frame(written)
    names = list(frame["file"])
    assert "config.json" in names and "model.safetensors" in names and names[-1].startswith("total (")
    assert frame["bytes"].iloc[-1] == sum(p.stat().st_size for p in written.rglob("*") if p.is_file())
    assert AutoModelForCausalLM.from_pretrained(written).dtype == torch.bfloat16
    tested = actions.load_and_test(written, request, "Where was the king born?")
    assert tested.model == str(written) and tested.seconds > 0 and isinstance(tested.text, str)
    assert "memfactory serve --model " + str(written) in actions.usage(written, request)
    with pytest.raises(MemFactoryError, match="already exists and is not empty"):
        request.export()
    assert ExportRequest(RUN, "step-000002", "merged", "bfloat16", str(ws / "out" / "merged"), force=True).export()


def test_an_adapter_export_loads_on_the_runs_base_model(ws):
    request = ExportRequest(RUN)  # the newest checkpoint, as an adapter, the run's dtype, the default folder
    assert request.argv() == ["export", RUN, "--db", str(ws / "runs" / "memfactory.db")]
    written = request.export()
    assert written == ws / "runs" / RUN / "export" / "step-000002-adapter"
    assert "adapter_model.safetensors" in set(actions.files_frame(written)["file"])
    tested = actions.load_and_test(written, request)
    assert tested.model == f"tiny://qwen3-mini + {written}"
    assert "--checkpoint" in actions.usage(written, request)


def test_a_merged_export_is_a_model_memfactory_eval_and_serve_accept(ws, capsys):
    """The folder the tab writes is what `memfactory eval` and `memfactory serve --model` take (the CLI
    lines ``usage`` shows), and the served model answers as load-and-test's greedy prompt did."""
    request = ExportRequest(RUN, mode="merged", out=str(ws / "out" / "for-cli"))
    written = request.export()
    tested = actions.load_and_test(written, request, "Where was the king born?")
    out = ws / "out" / "eval"
    assert main(["eval", str(written), "--sets", "eval_docqa", "--n", "1", "--k", "1", "--max-new-tokens", "4",
                 "--set", "modules.memory.chunk_tokens=256", "--set", "modules.memory.max_chunks=1",
                 "--keep-chunk-cap", "--out", str(out), "--no-progress"]) == 0
    assert str(written) in (out / "table.csv").read_text() and "eval_docqa" in capsys.readouterr().out

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "memfactory", "serve", "--model", str(written), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        client = OpenAIBackend(f"http://127.0.0.1:{port}", str(written), max_retries=0)
        deadline = time.monotonic() + 300  # a bound for a hang (the model loads in seconds), not a guess
        while True:
            try:
                assert client.list_models() == [str(written)]
                break
            except MemFactoryError:
                assert proc.poll() is None, proc.stdout.read()
                assert time.monotonic() < deadline, "memfactory serve did not come up"
                time.sleep(0.3)
        prompt = ChatPrompt([{"role": "user", "content": "Where was the king born?"}])
        [served] = client.generate([prompt], SamplingParams(max_new_tokens=actions.TEST_TOKENS, temperature=0.0))
    finally:
        proc.terminate()
        proc.communicate(timeout=60)
    assert served.text == tested.text  # the same weights, the same greedy answer


def test_bad_choices_are_refused_with_the_reason(ws):
    with pytest.raises(MemFactoryError, match="pick a run to export"):
        ExportRequest("").argv()
    with pytest.raises(MemFactoryError, match="no run 'lora-rum'"):
        ExportRequest("lora-rum", "step-000002").argv()
    with pytest.raises(MemFactoryError, match="checkpoint 'step-000009' of run 'lora-run' no longer exists"):
        ExportRequest(RUN, "step-000009").export()
    with pytest.raises(MemFactoryError, match="dtype 'int4' is not one of float32, bfloat16, float16"):
        ExportRequest(RUN, dtype="int4").command()
    with pytest.raises(MemFactoryError, match="checkpoint '../x' may only hold"):
        ExportRequest(RUN, "../x").argv()
    with pytest.raises(MemFactoryError, match="type a test prompt first"):
        actions.load_and_test(ws, ExportRequest(RUN), " ")
    with pytest.raises(MemFactoryError, match="does not exist: export first"):
        actions.load_and_test(ws / "nowhere", ExportRequest(RUN))


def test_human_sizes():
    assert [actions.human_size(n) for n in (0, 1023, 1024, 5 * 1024**2, 3 * 1024**3)] == [
        "0 B", "1023 B", "1.0 KiB", "5.0 MiB", "3.0 GiB"]
