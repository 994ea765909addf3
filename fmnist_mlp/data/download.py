"""Get the four Fashion-MNIST files into the cache folder, verified, from the first source that has them.

Sources, tried in order for each file until one yields verified contents:

1. the cache itself (a file is only ever moved there after verification);
2. Debian's ``dataset-fashion-mnist`` package folder, when present;
3. the HTTP mirrors: upstream's canonical address, the Keras mirror, GitHub at a pinned commit.

``sources`` (the CLI's repeatable ``--source``: folders or URLs) replaces 2 and 3. Every copy goes
to a temporary file in the cache folder, is verified, and only then renamed into place, so the
cache never holds a partial or unverified file; a file lock makes concurrent processes take turns.
"""

from __future__ import annotations

import os
import shutil
import stat
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from fmnist_mlp.errors import ConfigError, DataError
from fmnist_mlp.data.http import HostUnreachableError, HttpOptions, StalledError, download_url, make_session
from fmnist_mlp.io.lock import FileLock
from fmnist_mlp.io.reader import open_regular
from fmnist_mlp.data.manifest import file_entry as manifest_entry
from fmnist_mlp.data.manifest import file_sha256, load_manifest, save_manifest
from fmnist_mlp.data.manifest import matches as manifest_matches
from fmnist_mlp.io.files import clean_stale_tmp, new_temporary
from fmnist_mlp.io.paths import check_new_dirs, expand_user
from fmnist_mlp.data.idx import max_stored_bytes
from fmnist_mlp.data.specs import FASHION_MNIST_FILES, FileSpec, verify_file

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
# A fixed commit, so the GitHub raw files cannot change under us; data/fashion/ holds the four .gz files.
GITHUB_COMMIT = "949006594cc2f804a93b9155849734564c3545ec"
MIRRORS: tuple[str, ...] = (
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",
    f"https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/{GITHUB_COMMIT}/data/fashion/",
)
LOCK_NAME = ".lock"
HOW_TO_FIX = (
    "To fix: check the network connection (and HTTPS_PROXY if you need a proxy), or pass "
    "--source with a folder or URL holding the four .gz files, or install Debian's package "
    "(apt-get install dataset-fashion-mnist), which puts them in /usr/share/datasets/fashion-mnist."
)


def default_data_dir() -> Path:
    """The cache folder: $FMNIST_MLP_DATA_DIR, else $XDG_CACHE_HOME/fmnist-mlp, else ~/.cache/fmnist-mlp."""
    if os.environ.get("FMNIST_MLP_DATA_DIR"):
        return expand_user(os.environ["FMNIST_MLP_DATA_DIR"], "$FMNIST_MLP_DATA_DIR", ConfigError)
    return user_cache_dir()


def user_cache_dir() -> Path:
    """The user's own cache folder for the tool: $XDG_CACHE_HOME/fmnist-mlp, else
    ~/.cache/fmnist-mlp (the data's default home; compiled kernels live in it too)."""
    # The XDG spec says a relative XDG_CACHE_HOME is invalid and to be ignored.
    if os.path.isabs(os.path.expanduser(os.environ.get("XDG_CACHE_HOME", ""))):
        return expand_user(os.environ["XDG_CACHE_HOME"], "$XDG_CACHE_HOME", ConfigError) / "fmnist-mlp"
    home = os.environ.get("HOME")
    home = os.path.expanduser("~") if home is None else home     # unset: the password entry
    if not os.path.isabs(home) or home.rstrip("/") == "":
        # HOME="" makes Python's "~" the root folder (or a relative HOME, the current one):
        # the data would land under / or wherever the command happened to start.
        raise ConfigError(f"no cache folder: $HOME is {os.environ.get('HOME', '')!r}, not an "
                          f"absolute path; pass --data-dir or set FMNIST_MLP_DATA_DIR")
    return Path(home) / ".cache" / "fmnist-mlp"


def resolve_data_dir(data_dir: str | Path | None) -> Path:
    """``data_dir`` (the CLI's --data-dir) when given, else :func:`default_data_dir`."""
    return (expand_user(data_dir, "--data-dir", ConfigError) if data_dir is not None
            else default_data_dir())


def default_sources() -> list[str]:
    """Debian's folder when it exists, then the mirrors."""
    return ([str(DEBIAN_DIR)] if DEBIAN_DIR.is_dir() else []) + list(MIRRORS)


def is_url(source: str) -> bool:
    return source.startswith(("http://", "https://"))


@dataclass
class _FetchContext:
    """What fetching from the sources needs, and the state it keeps across the four files."""

    data_dir: Path
    http: HttpOptions
    progress: bool
    session: object = None
    manifest: dict = field(default_factory=dict)
    dead_hosts: dict[str, str] = field(default_factory=dict)  # source -> why, skipped for later files
    stalled: set[str] = field(default_factory=set)   # silent once: tried last, with full patience
    answered: set[str] = field(default_factory=set)  # sent something: no stall check needed
    deadline: float = 0.0                            # time.monotonic() bound of the whole download


def ensure_dataset(data_dir: str | Path | None = None, sources: Sequence[str] | None = None,
                   force: bool = False, progress: bool = True,
                   specs: Sequence[FileSpec] = FASHION_MNIST_FILES,
                   http: HttpOptions = HttpOptions()) -> Path:
    """Make sure ``data_dir`` holds every file of ``specs``, verified; return the folder (created if needed).

    sources: folders or http(s) URLs tried in order after the cache (None = Debian's folder, then
    the mirrors; [] = the cache only). force: fetch again even what the cache holds (the old file
    stays until a verified replacement is in place). Raises DataError listing every source tried
    and why it failed, plus how to fix it.
    """
    data_dir = resolve_data_dir(data_dir)
    check_new_dirs(data_dir, "--data-dir", ConfigError)
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"{data_dir}: cannot create the data folder: {exc.strerror or exc}") from None
    manifest = load_manifest(data_dir)
    states = [cached_state(data_dir, spec, manifest) for spec in specs]   # raises for foreign files
    if not force and all(state == "ok" for state in states):
        # Verified and complete: no lock needed, so a read-only cache works too.
        if manifest.pop("dirty", False):
            save_manifest(data_dir, manifest)
        return data_dir
    sources = default_sources() if sources is None else [str(s) for s in sources]
    context = _FetchContext(data_dir, http, progress,
                            deadline=time.monotonic() + http.total_timeout)
    failures: list[str] = []
    try:
        with FileLock(data_dir / LOCK_NAME):
            clean_stale_tmp(data_dir, legacy=True)      # partial downloads of killed processes
            context.manifest = manifest = load_manifest(data_dir)
            before = repr(manifest["files"])
            for spec in specs:
                # Checked under the lock: another process may have fetched it while we waited.
                if cached_state(data_dir, spec, manifest) == "ok" and not force:
                    continue
                reasons = _fetch_first(spec, sources, context)
                if reasons is not None:
                    failures.append(_failure_report(spec, data_dir, reasons, force))
            if manifest.pop("dirty", False) or repr(manifest["files"]) != before:
                save_manifest(data_dir, manifest)
    finally:
        if context.session is not None:
            context.session.close()
    if failures:
        raise DataError("could not get the Fashion-MNIST files.\n" + "\n".join(failures) + "\n" + HOW_TO_FIX)
    return data_dir


def cached_state(data_dir: Path, spec: FileSpec, manifest: dict) -> str:
    """"ok" (verified), "missing", or "damaged" (the tool's own copy, changed in place since it
    was verified: it may be replaced). A file the tool did not create that is not what ``spec``
    describes raises DataError: it is the user's, and is never deleted or overwritten."""
    path = data_dir / spec.filename
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    except OSError as exc:
        raise DataError(f"{path}: cannot read: {exc.strerror or exc}") from None
    # Opened as regular files, never through a link (the cache holds none), bounded by what the
    # file should hold: a link to /dev/zero, a FIFO or a gzip bomb is refused, never waited on.
    sha256 = file_sha256(path, max_bytes=max_stored_bytes(spec.size))
    if manifest_matches(manifest, spec.filename, spec.sha256, sha256):
        return "ok"
    try:
        # not recorded yet (an older cache, a folder the user filled)
        verify_file(path, spec, follow_links=False)
    except DataError as exc:
        entry = manifest_entry(manifest, spec.filename)
        if entry is not None and entry.get("ino") == info.st_ino and stat.S_ISREG(info.st_mode):
            return "damaged"
        why = ("its contents are not Fashion-MNIST's (digit MNIST uses the same file names)"
               if "verification failed" in str(exc) else str(exc).split(": ", 1)[-1])
        raise DataError(f"{path}: {why}; fmnist-mlp did not create this file and leaves it "
                        f"untouched: move it away or pass another --data-dir") from None
    manifest["files"][spec.filename] = {"sha256": sha256, "idx_sha256": spec.sha256,
                                        "ino": info.st_ino}
    manifest["dirty"] = True
    return "ok"


def _failure_report(spec: FileSpec, data_dir: Path, reasons: list[str], force: bool) -> str:
    cache_note = "not used (force); the cached copy is kept" if force else f"no {spec.filename}"
    tried = [f"  - cache {data_dir}: {cache_note}"] + [f"  - {reason}" for reason in reasons]
    if len(tried) == 1:
        tried.append("  - no other source was given")
    return f"{spec.filename}: every source failed:\n" + "\n".join(tried)


def _fetch_first(spec: FileSpec, sources: Iterable[str], context: _FetchContext) -> list[str] | None:
    """Install ``spec`` from the first source that yields it verified; None on success, else why each failed.

    A source that stays silent (accepts, never answers) costs one short attempt; it is tried
    again, with full patience, only after every other source has failed.
    """
    sources = list(sources)
    reasons: dict[str, str] = {}
    for patient in (False, True):
        for source in sources:
            if (source in context.stalled) != patient:
                continue
            if source in context.dead_hosts:
                reasons[source] = f"{source}: skipped, {context.dead_hosts[source]} for an earlier file"
                continue
            try:
                _install_from(source, spec, context)
                return None
            except StalledError as exc:
                context.stalled.add(source)
                reasons[source] = f"{exc}; tried again after the other sources"
            except HostUnreachableError as exc:
                context.dead_hosts[source] = "unreachable"
                reasons[source] = _then(reasons.get(source), str(exc))
            except DataError as exc:
                reasons[source] = _then(reasons.get(source), str(exc))
    return [reasons[s] for s in sources if s in reasons]


def _then(earlier: str | None, later: str) -> str:
    return later if earlier is None else f"{earlier}; then: {later}"


def _install_from(source: str, spec: FileSpec, context: _FetchContext) -> None:
    """Copy ``spec`` from ``source`` into a temporary file, verify it, rename it into the cache
    (over nothing, or over the tool's own damaged copy: :func:`cached_state` has checked)."""
    tmp = new_temporary(context.data_dir, spec.filename)
    try:
        label = _copy_to(source, spec, tmp, context)
        verify_file(tmp, spec, label)
        sha256 = file_sha256(tmp)
        target = context.data_dir / spec.filename
        os.replace(tmp, target)
        context.manifest["files"][spec.filename] = {
            "sha256": sha256, "idx_sha256": spec.sha256, "ino": os.stat(target).st_ino}
    finally:
        tmp.unlink(missing_ok=True)


def _copy_to(source: str, spec: FileSpec, tmp: Path, context: _FetchContext) -> str:
    """Write the file from ``source`` to ``tmp``; return the label naming where it came from."""
    if is_url(source):
        url = source.rstrip("/") + "/" + spec.filename
        if context.session is None:
            context.session = make_session()
        host = url.split("/")[2]
        download_url(url, tmp, context.session, context.http, context.progress, desc=spec.filename,
                     first_try=host not in context.answered and source not in context.stalled,
                     deadline=context.deadline)
        context.answered.add(host)
        return url
    if "://" in source:
        raise DataError(f"{source}: unsupported source (give a folder, or an http:// or https:// URL)")
    folder = expand_user(source, "--source", DataError)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder")
    # Accept the .gz name and the decompressed one (some tools unpack the files).
    for name in (spec.filename, spec.filename.removesuffix(".gz")):
        candidate = folder / name
        if candidate.is_file():
            try:
                # Regular, and no larger than such a file can be: a sparse file of terabytes
                # in a source folder is not copied into the cache to be found wrong after.
                with open_regular(candidate, "dataset file", follow_links=True, error=DataError,
                                  max_bytes=max_stored_bytes(spec.size)) as src, \
                        open(tmp, "wb") as dst:
                    shutil.copyfileobj(src, dst, 1 << 20)
            except OSError as exc:
                raise DataError(f"{candidate}: cannot read: {exc.strerror or exc}") from None
            return str(candidate)
    raise DataError(f"{folder}: no {spec.filename}")
