"""`ferry passwd FILE USER`: add, change or delete a user in a gateway password file.

The password is never an argument (other users would see it in `ps`, the shell would keep it
in its history): on a terminal it is asked twice; otherwise it is the first line of standard
input. `--random` generates one, stores it and prints it once, for provisioning scripts.
A missing FILE is created, with mode 0600.

Exit status: 0 done, 1 the user to delete is not in FILE or FILE could not be written,
2 bad command line, user name, password or FILE.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path

from .passwords import PasswordFile, check_username

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
RANDOM_PASSWORD_BYTES = 18
"""`secrets.token_urlsafe(18)`: 24 characters, 144 random bits."""


def provision(path: Path, username: str) -> str:
    """Give `username` a new random password in the file at `path` (created if missing); return it."""
    password = secrets.token_urlsafe(RANDOM_PASSWORD_BYTES)
    passwords = PasswordFile.load(path, missing_ok=True)
    passwords.set(username, password)
    passwords.save(path)
    return password


def read_password() -> str:
    """The new password: asked twice on a terminal, else the first line of standard input."""
    if sys.stdin.isatty():
        try:
            password = getpass.getpass("New password: ")
            if getpass.getpass("Again: ") != password:
                raise ValueError("the two passwords differ")
        except EOFError:
            raise ValueError("no password given") from None
    else:
        password = sys.stdin.readline().removesuffix("\n")
    if not password:
        raise ValueError("empty password")
    return password


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ferry passwd",
        description="Add, change or delete a user in a gateway password file (scrypt hashes). "
                    "The password is asked twice on a terminal, else read from the first line "
                    "of standard input; it is never an argument.",
    )
    parser.add_argument("file", type=Path, metavar="FILE", help="the password file (created, mode 0600, if missing)")
    parser.add_argument("user", metavar="USER", help="the user name (a device's is its device id)")
    what = parser.add_mutually_exclusive_group()
    what.add_argument("--delete", action="store_true", help="remove USER (exit 1 if absent)")
    what.add_argument("--random", action="store_true",
                      help="generate a random password, store it and print it once on stdout")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if problem := check_username(args.user):
        return fail(f"bad user name {args.user!r}: {problem}", EXIT_USAGE)
    try:
        if args.random:
            print(provision(args.file, args.user))
            return EXIT_OK
        passwords = PasswordFile.load(args.file, missing_ok=not args.delete)
        if args.delete:
            if not passwords.delete(args.user):
                return fail(f"{args.file}: no user {args.user!r}", EXIT_FAILED)
        else:
            passwords.set(args.user, read_password())
        passwords.save(args.file)
    except ValueError as e:  # PasswordFileError included
        return fail(str(e), EXIT_USAGE)
    except OSError as e:
        return fail(f"cannot write {args.file}: {e.strerror or e}", EXIT_FAILED)
    return EXIT_OK


def fail(message: str, status: int) -> int:
    print(f"ferry passwd: {message}", file=sys.stderr)
    return status
