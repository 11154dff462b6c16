"""`itamae shortcut`: a desktop launcher for this machine, with the bundled icon.

Each OS has its own idea of a launcher:
  - Linux: a freedesktop.org Desktop Entry (https://specifications.freedesktop.org/
    desktop-entry-spec/latest/) in ~/.local/share/applications, plus a copy on the
    Desktop when there is one.
  - macOS: an .app bundle (Contents/Info.plist + an executable script) in ~/Applications,
    which Finder, Launchpad and Spotlight show like any app.
  - Windows: a .lnk made through the WScript.Shell COM object (PowerShell), on the Desktop
    and in the Start menu; a .url Internet Shortcut is written where PowerShell is absent.
The launcher runs this same interpreter with `-m app.cli`, so it keeps working inside a
virtual environment without activating it.
"""

from __future__ import annotations

import json
import os
import plistlib
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

from converters.core.errors import ItamaeError

ASSETS = Path(__file__).resolve().parents[2] / "assets"
APP_NAME = "Itamae"
COMMENT = "Chat with open Mixture-of-Experts models, offline"


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "shortcut",
        help="create a desktop launcher for this machine",
        description="Create a desktop launcher (Linux .desktop, macOS .app, Windows .lnk).",
    )
    p.add_argument("--dest", help="folder to write the launcher into (default: the OS's own)")
    p.add_argument("--json", action="store_true", help="print the created paths as JSON")


def launch_command() -> list[str]:
    return [sys.executable, "-m", "app.cli"]


def _project_root() -> Path:
    return Path(__file__).resolve().parents[2]


def linux_entry(icon: Path) -> str:
    # Exec quoting per the Desktop Entry spec: arguments with spaces in double quotes.
    exec_line = " ".join(f'"{a}"' if " " in a else a for a in launch_command())
    return "\n".join(
        [
            "[Desktop Entry]",
            "Type=Application",
            "Version=1.5",
            f"Name={APP_NAME}",
            "Name[ja]=Itamae（板前）",
            f"Comment={COMMENT}",
            "Comment[ja]=オープンな MoE モデルとオフラインでチャット",
            f"Exec={exec_line}",
            f"Path={_project_root()}",
            f"Icon={icon}",
            "Terminal=false",
            "Categories=Utility;Development;",
            "StartupNotify=true",
            "",
        ]
    )


def create_linux(dest: Path | None) -> list[Path]:
    folders = [dest] if dest else [Path.home() / ".local" / "share" / "applications"]
    desktop = Path.home() / "Desktop"
    if dest is None and desktop.is_dir():
        folders.append(desktop)
    written = []
    for folder in folders:
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / "itamae.desktop"
        path.write_text(linux_entry(ASSETS / "icon.png"), encoding="utf-8")
        path.chmod(0o755)  # desktops only launch entries marked executable
        written.append(path)
    return written


def create_macos(dest: Path | None) -> list[Path]:
    folder = dest or Path.home() / "Applications"
    app = folder / f"{APP_NAME}.app"
    macos = app / "Contents" / "MacOS"
    resources = app / "Contents" / "Resources"
    macos.mkdir(parents=True, exist_ok=True)
    resources.mkdir(parents=True, exist_ok=True)
    script = macos / "itamae"
    command = " ".join(shlex.quote(a) for a in launch_command())
    script.write_text(
        f"#!/bin/sh\ncd {shlex.quote(str(_project_root()))}\nexec {command}\n", encoding="utf-8"
    )
    script.chmod(0o755)
    shutil.copyfile(ASSETS / "icon.png", resources / "icon.png")
    info = {
        "CFBundleName": APP_NAME,
        "CFBundleDisplayName": APP_NAME,
        "CFBundleIdentifier": "io.github.itamae",
        "CFBundleExecutable": "itamae",
        "CFBundleIconFile": "icon.png",
        "CFBundlePackageType": "APPL",
        "LSUIElement": False,
    }
    with open(app / "Contents" / "Info.plist", "wb") as f:
        plistlib.dump(info, f)
    return [app]


def create_windows(dest: Path | None) -> list[Path]:
    desktop = dest or Path(os.environ.get("USERPROFILE", str(Path.home()))) / "Desktop"
    desktop.mkdir(parents=True, exist_ok=True)
    target, *arguments = launch_command()
    pythonw = Path(target).with_name("pythonw.exe")
    target = str(pythonw) if pythonw.exists() else target  # no console window
    link = desktop / f"{APP_NAME}.lnk"
    icon = ASSETS / "icon.ico"
    powershell = shutil.which("powershell") or shutil.which("pwsh")
    if powershell:
        script = (
            "$s = (New-Object -ComObject WScript.Shell).CreateShortcut($env:ITAMAE_LNK);"
            "$s.TargetPath = $env:ITAMAE_TARGET; $s.Arguments = $env:ITAMAE_ARGS;"
            "$s.WorkingDirectory = $env:ITAMAE_DIR; $s.IconLocation = $env:ITAMAE_ICON;"
            "$s.Description = $env:ITAMAE_COMMENT; $s.Save()"
        )
        env = {
            **os.environ,
            "ITAMAE_LNK": str(link),
            "ITAMAE_TARGET": target,
            "ITAMAE_ARGS": subprocess.list2cmdline(arguments),
            "ITAMAE_DIR": str(_project_root()),
            "ITAMAE_ICON": str(icon),
            "ITAMAE_COMMENT": COMMENT,
        }
        subprocess.run([powershell, "-NoProfile", "-Command", script], env=env, check=True)
        return [link]
    launcher = desktop / "itamae.cmd"
    launcher.write_text(
        f'@echo off\r\ncd /d "{_project_root()}"\r\nstart "" '
        f"{subprocess.list2cmdline([target, *arguments])}\r\n",
        encoding="utf-8",
    )
    url = desktop / f"{APP_NAME}.url"
    url.write_text(
        f"[InternetShortcut]\r\nURL=file:///{launcher.as_posix()}\r\n"
        f"IconFile={icon}\r\nIconIndex=0\r\n",
        encoding="utf-8",
    )
    return [url, launcher]


def create(platform: str = sys.platform, dest: Path | None = None) -> list[Path]:
    if platform.startswith("linux") or platform.startswith("freebsd"):
        return create_linux(dest)
    if platform == "darwin":
        return create_macos(dest)
    if platform in ("win32", "cygwin"):
        return create_windows(dest)
    raise ItamaeError(
        f"Itamae does not know how to make a launcher on {platform}.",
        "Start it with the `itamae` command instead.",
    )


def run(args) -> int:
    dest = Path(args.dest).expanduser() if args.dest else None
    written = create(sys.platform, dest)
    if args.json:
        print(json.dumps({"created": [str(p) for p in written]}))
    else:
        for path in written:
            print(f"Created {path}")
    return 0
