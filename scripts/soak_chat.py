"""A long scripted chat in a pseudo-terminal: does the REPL hold up for hundreds of turns?

Drives ``expo-gguf chat`` on SmolLM2-135M with a small context, as a user would: N turns, a slash
command every few turns (/show, /stats, /set, /regen, /save), Ctrl+C during some replies. After
every turn ``/show`` gives the kept message count, so each trim is seen (the REPL itself tells
only once). Holds when: no traceback or error, every time the context fills the oldest whole
turns go and nothing else does, no reply is cut by a full context, the RSS after the last turn
is within 10% of the RSS at turn 20, and the final ``/save`` holds exactly the kept turns.

    python scripts/soak_chat.py                    # 200 turns, --ctx 512, --max-tokens 24
    python scripts/soak_chat.py --turns 20 --rss-turn 8

Prints the figures; exits 1 when a property fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _models import SMOLLM2_HINT, smollm2_path  # noqa: E402  (scripts/, beside this file)

from pty_terminal import Terminal  # noqa: E402  (shared with the pty tests)

SYSTEM = "Answer in one short sentence."
TOPICS = ("the moon", "rivers", "bread", "owls", "copper", "tea", "glaciers", "chess")
STATUS = re.compile(r"ctx (\d+)/(\d+)")
MESSAGES = re.compile(r"messages\s+(\d+)")
CTRL_C_TOKENS = 200  # long enough that a Ctrl+C lands inside the reply, not after it


def smollm_path() -> Path:
    path = smollm2_path()
    if path is None:
        sys.exit(f"SmolLM2 not found: {SMOLLM2_HINT}")
    return path


def rss_kib(pid: int) -> int:
    """Resident set of the chat process, from the kernel's own figure."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS in /proc status")


@dataclass
class Soak:
    """The conversation as the script believes it must be, checked against what the REPL says."""

    term: Terminal
    max_tokens: int
    n_ctx: int = 0
    questions: list[str] = field(default_factory=list)
    kept: int = 1  # messages the REPL holds: the system message
    trims: int = 0
    dropped_turns: int = 0
    ctrl_c_sent: int = 0
    ctrl_c_in_reply: int = 0
    failures: list[str] = field(default_factory=list)

    def fail(self, text: str) -> None:
        self.failures.append(text)
        print(f"FAIL: {text}", file=sys.stderr)

    def command(self, line: str) -> str:
        self.term.send(line + "\n")
        return self.term.prompt()

    def check_status(self, text: str, turn: int, interrupted: bool) -> None:
        found = STATUS.findall(text)
        if not found:
            self.fail(f"turn {turn}: no status line")
            return
        used, n_ctx = map(int, found[-1])
        self.n_ctx = n_ctx
        if used >= n_ctx and not interrupted:
            self.fail(f"turn {turn}: context full ({used}/{n_ctx}) instead of trimmed")

    def check_kept(self, turn: int, grew: int) -> None:
        """/show's message count: grown by ``grew``, or smaller by whole turns (a trim)."""
        shown = MESSAGES.findall(self.command("/show"))
        if not shown:
            self.fail(f"turn {turn}: /show gave no message count")
            return
        now, expected = int(shown[-1]), self.kept + grew
        if now < expected:
            lost = expected - now
            if lost % 2:
                self.fail(f"turn {turn}: {lost} messages dropped, not whole turns")
            self.trims += 1
            self.dropped_turns += lost // 2
        elif now > expected:
            self.fail(f"turn {turn}: {now} messages kept, expected at most {expected}")
        self.kept = now

    def turn(self, i: int, ctrl_c: bool) -> None:
        question = f"Question {i}: tell me one fact about {TOPICS[i % len(TOPICS)]}."
        if ctrl_c:
            self.command(f"/set max_tokens {CTRL_C_TOKENS}")
            question = f"Question {i}: write a very long story about {TOPICS[i % len(TOPICS)]}."
        self.questions.append(question)
        since = len(self.term.text)
        self.term.send(question + "\n")
        interrupted = False
        if ctrl_c:
            self.term.reply_started()
            self.term.send("\x03")
            self.ctrl_c_sent += 1
            landed = self.term.expect_any("(interrupted)", "Ctrl+C again")
            interrupted = landed == "(interrupted)"
            self.ctrl_c_in_reply += interrupted
        self.term.prompt()
        self.check_status(self.term.text[since:], i, interrupted)
        if ctrl_c:
            self.command(f"/set max_tokens {self.max_tokens}")
        self.check_kept(i, 2)

    def slash(self, i: int, save_to: Path) -> None:
        """One of the commands, in rotation; /regen answers again without growing the chat."""
        kind = (i // 4) % 5
        if kind == 3:
            self.check_status(self.command("/regen"), i, False)
            self.check_kept(i, 0)
        elif kind == 4:
            self.check_save(i, save_to)
        else:
            line, shows = [("/show", "messages"), ("/stats", "generated"), (f"/set seed {i}", f"seed = {i}")][kind]
            if shows not in self.command(line):
                self.fail(f"turn {i}: {line} did not print {shows!r}")

    def check_save(self, turn: int, path: Path) -> None:
        """The saved file is the system message plus the newest turns, none missing or altered."""
        self.command(f"/save {path}")
        messages = json.loads(path.read_text(encoding="utf-8"))["messages"]
        users = [m["content"] for m in messages if m["role"] == "user"]
        roles = [m["role"] for m in messages]
        if len(messages) != self.kept:
            self.fail(f"turn {turn}: /save holds {len(messages)} messages, /show said {self.kept}")
        if roles != ["system"] + ["user", "assistant"] * (len(users)):
            self.fail(f"turn {turn}: /save roles out of order: {roles}")
        if messages[0]["content"] != SYSTEM:
            self.fail(f"turn {turn}: the system message was not kept")
        if not users or users != self.questions[-len(users) :]:
            self.fail(f"turn {turn}: /save does not hold the newest {len(users)} questions")


def soak(args: argparse.Namespace) -> int:
    """Run the session; returns the exit code."""
    model = args.model or smollm_path()
    term = Terminal(
        [
            sys.executable,
            "-c",
            "from expo_gguf.cli import main; main()",
            "chat",
            str(model),
            "--ctx",
            str(args.ctx),
            "--max-tokens",
            str(args.max_tokens),
            "--temp",
            "0",
            "--seed",
            "0",
            "--threads",
            str(args.threads),
            "--system",
            SYSTEM,
        ]
    )
    s = Soak(term, args.max_tokens)
    rss_at, rss_end = 0, 0
    start = time.monotonic()
    with tempfile.TemporaryDirectory() as tmp:
        save_to = Path(tmp) / "conversation.json"
        try:
            term.expect("/help for commands", timeout=120)
            term.prompt()
            for i in range(1, args.turns + 1):
                s.turn(i, ctrl_c=i % args.ctrl_c_every == 0)
                if i % 4 == 0:
                    s.slash(i, save_to)
                if i == args.rss_turn:
                    rss_at = rss_kib(term.pid)
                if args.verbose and i % 10 == 0:
                    print(
                        f"turn {i}: kept {s.kept} messages, {s.trims} trims, {time.monotonic() - start:.0f} s",
                        file=sys.stderr,
                    )
            rss_end = rss_kib(term.pid)
            s.check_save(args.turns, save_to)
            term.send("/exit\n")
            code = term.wait()
            if code != 0:
                s.fail(f"chat exited with {code}")
        except AssertionError as e:  # a step not seen in time: the terminal's tail says why
            s.fail(str(e))
        finally:
            try:
                os.kill(term.pid, 9)
                os.waitpid(term.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
    for bad in ("Traceback", "error:"):
        if bad in term.text:
            at = term.text.index(bad)
            s.fail(f"{bad!r} on the terminal: {term.text[at - 200 : at + 400]}")
    if s.trims == 0:
        s.fail("the context never filled: raise --turns or lower --ctx")
    if s.ctrl_c_sent and not s.ctrl_c_in_reply:
        s.fail("no Ctrl+C landed inside a reply")
    growth = (rss_end - rss_at) / rss_at if rss_at else float("nan")
    if not abs(growth) <= args.rss_tolerance:
        s.fail(f"RSS moved {growth:+.1%} from turn {args.rss_turn} to the end")
    print(f"turns {args.turns} (ctx {s.n_ctx or args.ctx}, max_tokens {args.max_tokens}, threads {args.threads})")
    print(f"Ctrl+C {s.ctrl_c_sent} sent, {s.ctrl_c_in_reply} inside a reply")
    print(f"trims {s.trims} ({s.dropped_turns} turns dropped), {s.kept} messages kept at the end")
    print(f"RSS turn {args.rss_turn} {rss_at / 1024:.1f} MiB, end {rss_end / 1024:.1f} MiB ({growth:+.1%})")
    print(f"time {time.monotonic() - start:.0f} s")
    print("FAILED: " + "; ".join(f[:300] for f in s.failures) if s.failures else "all properties hold")
    return 1 if s.failures else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", type=Path, help="GGUF (default: SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--turns", type=int, default=200)
    p.add_argument("--ctx", type=int, default=512)
    p.add_argument("--max-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--ctrl-c-every", type=int, default=7, help="Ctrl+C during every Nth reply")
    p.add_argument("--rss-turn", type=int, default=20, help="turn whose RSS the end is held to")
    p.add_argument("--rss-tolerance", type=float, default=0.10)
    p.add_argument("--verbose", action="store_true", help="progress every 10 turns on stderr")
    args = p.parse_args()
    if not 1 <= args.rss_turn <= args.turns:
        p.error("--rss-turn must lie within --turns")
    sys.exit(soak(args))


if __name__ == "__main__":
    main()
