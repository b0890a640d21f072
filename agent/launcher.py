"""The agent launcher: starts the agent from its active slot and puts a new agent on trial.

``kioskfleet-agent-launcher --root DIR [--trial-s N] [--fallback 'CMD'] -- AGENT_ARGS...``
(shipped as ``packaging/systemd/kioskfleet-agent.service``) runs ``DIR/current/run
AGENT_ARGS`` (the OS package's agent, ``--fallback``, while no slot is active) and
supervises it:

- the agent exits and ``trial.json`` is ``staged`` (the agent installed a release of
  itself into the inactive slot and stopped): write ``trial``, switch ``current`` to the
  new slot, start it; it is on trial for ``trial_s``;
- on trial: ``confirm.json`` names the trial -> write ``committed`` (the new agent then
  reports ``succeeded``); the new agent exits, or ``trial_s`` passes unconfirmed (it is
  stopped: SIGTERM, then SIGKILL) -> ``rolling_back``, switch ``current`` back,
  ``rolled_back``, start the previous agent, which reports ``rolled_back``;
- the agent exits otherwise: the launcher exits with its code and systemd
  (``Restart=always``) starts the launcher again.

A power cut at any step is handled by ``recover()`` when the launcher starts: ``trial``
(the trial was cut off) -> committed if the agent had confirmed, else rolled back;
``rolling_back`` -> rolled back again (idempotent); ``staged`` -> the trial begins as
above; final steps -> nothing. Design choice: a cut-off trial is rolled back, not
retried: the previous agent is known good (the same rule as agent/install/bundle.py).

Never: start an agent from a slot that is not ``current``, or write a slot.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from agent.install.errors import InstallError
from agent.self_update import AgentSlots, AgentSlotsError, Trial

__all__ = ["Launcher", "LauncherConfig", "main"]

_log = logging.getLogger(__name__)

EXIT_SETUP = 1


@dataclass(frozen=True)
class LauncherConfig:
    """Where the agent's slots are, what to run, how long a new agent is on trial."""

    root: Path
    agent_args: tuple[str, ...] = ()
    fallback_argv: tuple[str, ...] = ()  # the OS package's agent, while no slot is active
    trial_s: float = 120.0
    poll_s: float = 0.2
    stop_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if not 0 < self.trial_s <= 3600 or not 0 < self.poll_s <= 60:
            raise ValueError("trial_s must be in (0, 3600], poll_s in (0, 60]")
        if not 0 < self.stop_timeout_s <= 600:
            raise ValueError("stop_timeout_s must be in (0, 600]")


class Launcher:
    """Supervises one agent process (see the module docstring)."""

    def __init__(
        self, config: LauncherConfig, *, on_step: Callable[[str], None] | None = None
    ) -> None:
        """``on_step(step)`` is called after each trial write (tests cut the power there)."""
        self._config = config
        self._slots = AgentSlots(config.root)
        self._on_step = on_step
        self._stop = False
        self.child: subprocess.Popen[bytes] | None = None

    # -- trial steps (each persisted before the next action) ---------------------------

    def _save(self, trial: Trial) -> Trial:
        self._slots.save(trial)
        _log.info("agent trial %s: %s (%s -> %s)", trial.trial_id, trial.step,
                  trial.from_slot, trial.to_slot)  # fmt: skip
        if self._on_step is not None:
            self._on_step(trial.step)
        return trial

    def begin_trial(self, trial: Trial) -> Trial:
        """``staged`` -> ``trial``: switch ``current`` to the new slot."""
        trial = self._save(trial.at("trial"))
        self._slots.switch(trial.to_slot)
        return trial

    def commit(self, trial: Trial) -> Trial:
        return self._save(trial.at("committed", "confirmed"))

    def roll_back(self, trial: Trial, detail: str) -> Trial:
        """Switch ``current`` back to the previous slot (none: the fallback agent)."""
        trial = self._save(trial.at("rolling_back", detail))
        self._slots.switch(trial.from_slot)
        return self._save(trial.at("rolled_back"))

    def recover(self) -> Trial | None:
        """Finish or undo what a power cut interrupted (module docstring); the trial now."""
        trial = self._slots.load()
        if trial is None or trial.final:
            return trial
        if trial.step == "staged":
            return self.begin_trial(trial)
        if trial.step == "rolling_back":
            return self.roll_back(trial, trial.detail)
        if self._slots.confirmed(trial):
            return self.commit(trial)
        return self.roll_back(trial, "the trial was cut off before the agent confirmed")

    # -- processes ---------------------------------------------------------------------

    def _argv(self) -> list[str]:
        slot = self._slots.active_slot()
        if slot is None:
            if not self._config.fallback_argv:
                raise AgentSlotsError(self._config.root, "no active slot and no --fallback agent")
            return list(self._config.fallback_argv)
        return [str(self._slots.entry_point(slot)), *self._config.agent_args]

    def _start(self) -> subprocess.Popen[bytes]:
        argv = self._argv()
        _log.info("starting the agent: %s", argv)
        self.child = subprocess.Popen(argv)  # noqa: S603 -- our own slot's entry point
        return self.child

    def _stop_child(self, child: subprocess.Popen[bytes]) -> int:
        if child.poll() is None:
            child.terminate()
            try:
                return child.wait(self._config.stop_timeout_s)
            except subprocess.TimeoutExpired:
                child.kill()
        return child.wait()

    def _readable(self, read: Callable[[], Trial | None]) -> Trial | None:
        """``read()``; None (logged) if the trial files are unreadable: the agent in
        ``current`` still runs, so the terminal stays reachable, and the agent's next
        self-update fails on the same file (reported to the server)."""
        try:
            return read()
        except AgentSlotsError as exc:
            _log.error("%s; running the current agent without a trial", exc)
            return None

    def request_stop(self) -> None:
        self._stop = True

    def run(self) -> int:
        """Recover, then supervise until the agent exits outside a trial or a stop is asked.

        Returns the agent's exit code (0 after a stop). Raises AgentSlotsError when there
        is no agent to start, InstallError when ``current`` is not a slot link.
        """
        trial = self._readable(self.recover)
        child: subprocess.Popen[bytes] | None = None
        deadline = 0.0
        while True:
            if child is None:
                child = self._start()
                deadline = time.monotonic() + self._config.trial_s
            if self._stop:
                self._stop_child(child)
                return 0
            code = child.poll()
            if trial is not None and trial.step == "trial":
                if self._slots.confirmed(trial):
                    trial = self.commit(trial)
                elif code is not None or time.monotonic() > deadline:
                    why = f"exited with {code}" if code is not None else "did not confirm"
                    self._stop_child(child)
                    trial = self.roll_back(trial, f"the new agent {why} within the trial")
                    child = None
                    continue
            elif code is not None:
                trial = self._readable(self._slots.load)
                if trial is not None and trial.step == "staged":
                    trial = self.begin_trial(trial)
                    child = None
                    continue
                _log.warning("the agent exited with %s", code)
                return code
            time.sleep(self._config.poll_s)


def _parse(argv: Sequence[str]) -> LauncherConfig:
    parser = argparse.ArgumentParser(prog="kioskfleet-agent-launcher", description=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="the agent's slot root")
    parser.add_argument("--trial-s", type=float, default=120.0, help="seconds to confirm")
    parser.add_argument("--poll-s", type=float, default=0.2)
    parser.add_argument("--stop-timeout-s", type=float, default=30.0)
    parser.add_argument(
        "--fallback", default="", help="the agent command (one string) while no slot is active"
    )
    parser.add_argument("agent_args", nargs="*", help="after --: the arguments of each agent")
    args = parser.parse_args(argv)
    return LauncherConfig(
        root=args.root,
        agent_args=tuple(args.agent_args),
        fallback_argv=tuple(shlex.split(args.fallback)),
        trial_s=args.trial_s,
        poll_s=args.poll_s,
        stop_timeout_s=args.stop_timeout_s,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The console entry ``kioskfleet-agent-launcher``; SIGTERM/SIGINT stop the agent first."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        config = _parse(sys.argv[1:] if argv is None else argv)
    except ValueError as exc:
        print(f"kioskfleet-agent-launcher: {exc}", file=sys.stderr)
        return EXIT_SETUP
    launcher = Launcher(config)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        launcher.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)
    try:
        return launcher.run()
    except InstallError as exc:
        print(f"kioskfleet-agent-launcher: {exc}", file=sys.stderr)
        return EXIT_SETUP


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
