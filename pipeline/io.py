"""Reading and writing run outputs, on a local path or any pyarrow filesystem URI
(`s3://bucket/prefix`, `gs://...`, `hdfs://...`, `file:///abs/path`).

Writers replace files atomically (write `x.part`, then rename), so a crash never leaves a
half-written file that a rerun would trust (on object stores a rename is a copy: the part
file written last still marks a batch complete, see `pipeline.run_folder`, which knows the
run folder's names and rules; this module knows only files).
"""

from __future__ import annotations

import json
import os
import posixpath
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

_FILESYSTEMS: dict[str, pafs.FileSystem] = {}


def is_uri(path: str) -> bool:
    return "://" in str(path)


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path inside it) for a local path or a URI. One filesystem object per
    scheme and authority, kept for the process (clients are reused; an in-memory `mock://`
    filesystem keeps its files)."""
    path = str(path)
    if not is_uri(path):
        return pafs.LocalFileSystem(), os.path.abspath(path)
    scheme, rest = path.split("://", 1)
    authority, _, key = rest.partition("/")
    if f"{scheme}://{authority}" not in _FILESYSTEMS:
        _FILESYSTEMS[f"{scheme}://{authority}"] = pafs.FileSystem.from_uri(path)[0]
    fs = _FILESYSTEMS[f"{scheme}://{authority}"]
    if scheme in ("file", "hdfs", "viewfs"):  # paths from the root, the authority names the host
        return fs, "/" + key
    return fs, posixpath.join(authority, key) if authority else key  # object stores: bucket/key


def join(base: str, *names: str) -> str:
    """A path below `base`, for local paths and URIs alike."""
    return posixpath.join(str(base), *names) if is_uri(base) else os.path.join(base, *names)


def exists(path: str) -> bool:
    fs, p = resolve(path)
    return fs.get_file_info(p).type != pafs.FileType.NotFound


def makedirs(path: str) -> None:
    fs, p = resolve(path)
    fs.create_dir(p, recursive=True)


def remove(path: str) -> None:
    fs, p = resolve(path)
    fs.delete_file(p)


def read_table(path: str, columns: list[str] | None = None) -> pa.Table:
    fs, p = resolve(path)
    return pq.read_table(p, columns=columns, filesystem=fs)


def read_schema(path: str) -> pa.Schema:
    fs, p = resolve(path)
    return pq.read_schema(p, filesystem=fs)


def read_metadata(path: str) -> Any:
    """A Parquet file's footer (rows, row groups, statistics), without its data."""
    fs, p = resolve(path)
    return pq.read_metadata(p, filesystem=fs)


def read_json(path: str) -> Any:
    return json.loads(read_bytes(path).decode())


def _write_atomically(path: str, write: Any) -> None:
    """`write(fs, tmp)` writes `path + ".part"`, which then replaces `path`; on a local disk
    the file is synced before the rename and the folder after it, so a power loss leaves the
    old file or the whole new one, never a torn one under the final name."""
    fs, p = resolve(path)
    fs.create_dir(posixpath.dirname(p), recursive=True)
    write(fs, p + ".part")
    if isinstance(fs, pafs.LocalFileSystem):
        _replace_synced(p + ".part", p)
    else:
        fs.move(p + ".part", p)


def _replace_synced(tmp: str, path: str) -> None:
    """A local file written whole at `tmp` put in place at `path`: synced, renamed, the folder synced."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(os.path.dirname(path))


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_table(table: pa.Table, path: str, row_group_size: int | None = None) -> None:
    """Write a Parquet file atomically (`row_group_size` rows per row group)."""
    _write_atomically(path, lambda fs, tmp: pq.write_table(table, tmp, filesystem=fs, row_group_size=row_group_size))


def write_row_groups(tables: list[pa.Table], path: str) -> None:
    """Write a Parquet file atomically, each table one row group (a reader of one video reads
    only its group)."""
    def write(fs: pafs.FileSystem, tmp: str) -> None:
        with pq.ParquetWriter(tmp, tables[0].schema, filesystem=fs) as w:
            for t in tables:
                w.write_table(t, row_group_size=max(1, t.num_rows))

    _write_atomically(path, write)


def write_bytes(data: bytes, path: str) -> None:
    """Write a file's bytes atomically."""
    def write(fs: pafs.FileSystem, tmp: str) -> None:
        with fs.open_output_stream(tmp) as f:
            f.write(data)

    _write_atomically(path, write)


def local_path(path: str) -> str | None:
    """The path on this machine's disk of a local path or file:// URI, else None."""
    fs, p = resolve(path)
    return p if isinstance(fs, pafs.LocalFileSystem) else None


def write_with(path: str, write: Any) -> None:
    """A file that a library writes itself (`write(local_path)`: FAISS's write_index), atomically;
    to an object store through a local temporary file, streamed."""
    local = local_path(path)
    if local is not None:
        os.makedirs(os.path.dirname(local), exist_ok=True)
        write(local + ".part")
        _replace_synced(local + ".part", local)
        return
    import shutil
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        write(os.path.join(tmp, "file"))

        def upload(fs: pafs.FileSystem, dest: str) -> None:
            with open(os.path.join(tmp, "file"), "rb") as src, fs.open_output_stream(dest) as out:
                shutil.copyfileobj(src, out, 1 << 22)

        _write_atomically(path, upload)


def file_size(path: str) -> int:
    fs, p = resolve(path)
    return fs.get_file_info(p).size


def read_bytes(path: str) -> bytes:
    fs, p = resolve(path)
    with fs.open_input_stream(p) as f:
        return f.read()


def write_json(obj: Any, path: str) -> None:
    """Write JSON atomically."""
    write_bytes((json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode(), path)


# --- datasets written in parts (supervoxels/, label_volumes/, ...) ---------------------

def part_files(folder: str) -> list[str]:
    """The complete part files of a dataset folder and of its partition folders
    (`layer=.../class=.../`), in order (`*.part` leftovers excluded)."""
    fs, p = resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True, recursive=True))
    rels = [posixpath.relpath(i.path, p) for i in infos if i.type == pafs.FileType.File]
    return sorted(join(folder, *r.split("/")) for r in rels
                  if posixpath.basename(r).startswith("part-") and r.endswith(".parquet"))


def leftover_files(folder: str) -> list[str]:
    """The `*.part` files under a folder: writes a crash (or a full disk) cut short."""
    fs, p = resolve(folder)
    infos = fs.get_file_info(pafs.FileSelector(p, allow_not_found=True, recursive=True))
    return sorted(join(folder, *posixpath.relpath(i.path, p).split("/")) for i in infos
                  if i.type == pafs.FileType.File and i.path.endswith(".part"))


def map_files(fn: Any, files: list[str]) -> list[Any]:
    """`fn(path)` for each file, a few at once on the process's readers (object stores answer
    each request slowly), in the order given."""
    return [fn(f) for f in files] if len(files) <= 1 else list(_readers().map(fn, files))


def open_input_file(path: str) -> Any:
    """A random-access file (what a Parquet reader reads one row group of)."""
    fs, p = resolve(path)
    return fs.open_input_file(p)


def read_row_groups(path: str, row_groups: list[int], columns: list[str] | None = None) -> pa.Table:
    """Only the given row groups of a Parquet file (its footer, then those groups' bytes)."""
    with open_input_file(path) as f:
        return pq.ParquetFile(f).read_row_groups(row_groups, columns=columns)


def read_parts(folder: str, columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """All complete parts of a dataset folder as one table (optionally filtered)."""

    files = part_files(folder)
    if not files:
        raise FileNotFoundError(f"no dataset at {folder} (no part-*.parquet files)")
    return read_files(files, columns, filter)


def read_files(files: list[str], columns: list[str] | None = None, filter: Any = None) -> pa.Table:
    """Several Parquet files of one schema as one table, in the order given (optionally
    filtered; row groups whose statistics exclude the filter are skipped). Each file is read on
    one thread, a few files at once (object stores answer each request slowly): a dataset
    scan over the same files held 15-20 MB more of the driver's memory, growing with the files'
    row groups (bench/scale.py)."""
    def read(path: str) -> pa.Table:
        fs, p = resolve(path)
        return pq.read_table(p, columns=columns, filters=filter, filesystem=fs, use_threads=False, pre_buffer=False)

    return pa.concat_tables(map_files(read, files), promote_options="default")


_READERS: Any = None


def _readers() -> Any:
    """The process's file readers: 8 threads, started on first use and kept (readers run on
    actors' hot paths, a read per video)."""
    global _READERS
    if _READERS is None:
        from concurrent.futures import ThreadPoolExecutor

        _READERS = ThreadPoolExecutor(8, thread_name_prefix="parquet-reader")
    return _READERS


def _forget_readers() -> None:
    global _READERS
    _READERS = None  # a forked child has none of its parent's threads: it starts its own


os.register_at_fork(after_in_child=_forget_readers)


def count_equal(files: list[str], column: str, value: Any) -> int:
    """Rows of several Parquet files whose `column` equals `value`: one file at a time, one
    column, batch by batch, no thread pool (a dataset scan held about 20 MB of the driver's
    memory for a few MB of files)."""
    n = 0
    for f in files:
        with open_input_file(f) as src:
            for batch in pq.ParquetFile(src).iter_batches(columns=[column], use_threads=False):
                n += int(pc.sum(pc.equal(batch.column(0), value)).as_py() or 0)
    return n
