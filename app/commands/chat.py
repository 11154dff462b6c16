"""`itamae chat`: chat with a model in the terminal (app/terminal_chat.py), into the same
conversation store as the UI. With stdin not a terminal, one message per line."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

try:
    import readline  # line editing for input(); not on every platform (Windows)
except ImportError:
    readline = None

from app.chat_reply import REASONING_CHOICES, ChatParams
from app.launcher import startup_model
from app.model_manager import ModelManager
from app.model_settings import ModelSettings, model_key
from app.settings import AppPaths, SettingsFile
from app.store import ConversationStore
from app.terminal_chat import HELP, TerminalChat
from converters.core.errors import ItamaeError
from engine.loader import resolve_source

HISTORY_LINES = 1000  # lines of input history kept between sessions
OVERRIDES = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "max_tokens")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "chat",
        help="chat in the terminal (reads stdin when it is not a terminal)",
        description="Chat with a model in the terminal; conversations appear in the UI too.",
    )
    p.add_argument(
        "--model", help="a model folder, a .gguf, or 'demo' (default: the startup model)"
    )
    p.add_argument("--engine", default="auto", choices=["auto", "torch", "llamacpp", "remote"])
    p.add_argument("--system", default="", help="a system prompt")
    p.add_argument("--temperature", type=float, help="this session only; else the model's settings")
    p.add_argument("--top-p", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--min-p", type=float)
    p.add_argument("--repeat-penalty", type=float)
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--reasoning",
        default="default",
        choices=REASONING_CHOICES,
        help="reasoning models: thinking off, or an effort level (default: the model's)",
    )


def run(args) -> int:
    paths = AppPaths.default().ensure()
    settings = SettingsFile(paths).load()
    manager = ModelManager()
    model_settings = ModelSettings(paths.model_settings_file)

    def load_model(name: str) -> tuple[str, ChatParams]:
        manager.load(name, args.engine, wait=True)
        status = manager.status
        if status.state != "ready":
            raise ItamaeError(status.message, "Check the name with `itamae models`.")
        sampling = model_settings.sampling(model_key(name), _local(name), settings.sampling)
        values = vars(sampling.values) | {
            k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None
        }
        params = ChatParams(
            args.system, seed=args.seed, experts_per_token=0, reasoning=args.reasoning, **values
        )
        return str(name), params

    name = args.model or startup_model(None, settings.startup_model)
    if not name:
        raise ItamaeError("No model to chat with.", "Pass --model PATH, or --model demo.")
    model_name, params = load_model(name)
    interactive = sys.stdin.isatty()
    chat = TerminalChat(
        ConversationStore(paths.database),
        manager,
        params,
        model_name,
        load_model,
        interactive=interactive,
    )
    try:
        if not interactive:
            return chat.run(_piped_line)
        with _readline_history(paths.data_dir / "chat_history"):
            print(f"Chatting with {model_name}. /help for commands.\n{HELP.splitlines()[-1]}")
            return chat.run(_terminal_line)
    finally:
        manager.unload()


def _local(name: str) -> Path | None:
    source = resolve_source(name)
    return None if isinstance(source, str) else Path(source)


def _piped_line(prompt: str) -> str | None:
    line = sys.stdin.readline()
    return line.rstrip("\n") if line else None


def _terminal_line(prompt: str) -> str | None:
    try:
        return input(prompt)
    except EOFError:  # Ctrl-D
        print()
        return None
    except KeyboardInterrupt:  # Ctrl-C at the prompt drops the line, as a shell does
        print()
        return ""


@contextlib.contextmanager
def _readline_history(path: Path):
    """Line editing and history through GNU readline (input() uses it once imported)."""
    if readline is None:
        yield
        return
    with contextlib.suppress(OSError):
        readline.read_history_file(path)
    readline.set_history_length(HISTORY_LINES)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            readline.write_history_file(path)
