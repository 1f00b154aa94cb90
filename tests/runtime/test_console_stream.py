"""run.console=quiet: which lines reach the console (`shown`), and that ConsoleStream
keeps every line in console.log either way. Lines as a tiny CPU run prints them."""
import io

from rlhf_exact.runtime.console import ConsoleStream, once, shown

ACTOR = "\x1b[36m(SamplerActor pid=16222)\x1b[0m "


def test_shown_keeps_the_runs_lines_warnings_and_tracebacks():
    for line in ("run directory: /tmp/x", "2026-12-04 00:44:16,009 INFO rlhf_exact: starting Ray ...",
                 "step 1/2: reward 0.5000  parity exact", "Traceback (most recent call last):",
                 "error: reward 'boom' raised",
                 "2026-12-04 00:44:16,728\tWARNING authentication_token_setup.py:85 -- x",
                 ACTOR + "(MainProcess pid=16222) WARNING 12-04 00:44:39 [vllm.py:1703] Enforce eager set",
                 ACTOR + "ERROR 12-04 00:44:39 [core.py:1] engine died", "wandb: WARNING offline"):
        assert shown(line), line


def test_shown_drops_library_info_actor_output_and_banners():
    for line in (ACTOR + "Triton is installed, but doesn't include CPU backend. Disabling Triton.",
                 ACTOR + "(MainProcess pid=16222) INFO 12-04 00:44:39 [model.py:1] Resolved architecture",
                 "(TrainerActor pid=9, ip=10.0.0.2) Traceback (most recent call last):",
                 "INFO 12-04 00:44:39 [__init__.py:1] Automatically detected platform cpu.",
                 "2026-12-04 00:44:16,728\tINFO worker.py:1 -- Started a local Ray instance.",
                 "wandb: Tracking run with wandb version 0.31.0"):
        assert not shown(line), line


def test_console_stream_logs_every_line_and_shows_the_kept_ones():
    console, log = io.StringIO(), io.StringIO()
    s = ConsoleStream(console, log, shown)
    s.write("step 1/2: ok\n" + ACTOR + "Disabling Triton.\npart")
    s.write("ial\n")
    s.write("\rsteps:  50%")  # a progress bar's redraw: the console only
    s.write(ACTOR + "\rLoading safetensors checkpoint shards: 100%")  # print: the text, then "\n"
    s.write("\n")
    assert console.getvalue() == "step 1/2: ok\npartial\n\rsteps:  50%"
    assert log.getvalue() == ("step 1/2: ok\n(SamplerActor pid=16222) Disabling Triton.\npartial\n"
                              "Loading safetensors checkpoint shards: 100%\n")


def test_console_stream_outlives_its_log_file():
    """A logging handler made during a run keeps the stream; a later run in the same
    process (tests) writes through it after the file is closed: to the console only."""
    console, log = io.StringIO(), io.StringIO()
    s = ConsoleStream(console, log, shown)
    log.close()
    s.write("step 1/1: ok\n")
    s.flush()
    assert console.getvalue() == "step 1/1: ok\n"


def test_an_actor_warning_repeated_by_each_vllm_process_is_shown_once():
    keep = once()
    lines = [ACTOR + "(VllmWorker-0 pid=16392) WARNING 12-04 00:46:10 [vllm.py:725] Model Runner V2 requires Triton",
             ACTOR + "(EngineCore pid=16308) WARNING 12-04 00:46:11 [vllm.py:725] Model Runner V2 requires Triton",
             ACTOR + "(EngineCore pid=16308) WARNING 12-04 00:46:12 [cpu.py:224] Triton is not installed.",
             "step 1/2: ok", "step 1/2: ok"]
    assert [keep(line) for line in lines] == [True, False, True, True, True]
