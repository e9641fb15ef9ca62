#!/usr/bin/env python3
"""Writes one container image as a docker-archive tarball (what `docker save` writes and
`ctr images import` reads: manifest.json, the image config and its uncompressed layers) and
prints its path. hack/image.sh runs it; the images themselves are described there.

    image-archive.py --out-dir DIR --reference REF {operator|busybox|pause} BINARY
    image-archive.py --out-dir DIR --reference REF [--dags FOLDER] airflow VENV

The tarball is DIR/<image>-<hash>.tar, where the hash covers the manifest and the config
(whose diff_ids are the layers' sha256, so every byte of every file) and this script's own
source. Equal inputs give equal bytes: every entry is owned by number, written in path order
and dated 1970-01-01, except the files of the interpreter and the venv, which keep their
modification time (in whole seconds) so that the bytecode Python cached beside them
(__pycache__, checked against the source's mtime) stays valid in the image. An existing
tarball of that name is reused; the others of the same image are removed.

The airflow image has four layers (system libraries and /etc, the interpreter, the venv, the
DAG files), each cached in DIR/layers under a key of what it lists (paths, modes, owners,
and each copied file's size and modification time, or the hash of the bytes written), so a
rerun with unchanged inputs only stats the files and a changed DAG rewrites the DAG layer
alone. The shared libraries ldd finds for its ELF files are cached there too, keyed by the
interpreter's and the venv's layers and /etc/ld.so.cache.
Python 3 standard library only; progress goes to stderr.
"""
import argparse
import hashlib
import io
import json
import os
import platform
import stat as stat_module
import subprocess
import sys
import tarfile
import time
from pathlib import Path

NONROOT = 65532
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
EPOCH = "1970-01-01T00:00:00Z"
# Bytes per read and write when a host file or a cached layer is copied into a tar.
COPY_BUFFER = 4 << 20

# distroless's users and groups: root, nobody and nonroot (65532).
PASSWD = f"""root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
nonroot:x:{NONROOT}:{NONROOT}:nonroot:/home/nonroot:/sbin/nologin
"""
GROUP = f"""root:x:0:
tty:x:5:
staff:x:50:
nobody:x:65534:
nonroot:x:{NONROOT}:
"""
# glibc reads it to resolve host names (distroless ships the same lines).
NSSWITCH = """passwd: files
group: files
hosts: files dns
networks: files
protocols: files
services: files
"""

# The Dockerfile's runtime stage, built without build arguments (so the ARG defaults:
# version "dev", revision "unknown", no source). tests/image.rs compares these with it.
OPERATOR_CONFIG = {
    "User": f"{NONROOT}:{NONROOT}",
    "WorkingDir": "/home/nonroot",
    "Env": [f"PATH={PATH}", f"SSL_CERT_FILE={CA_BUNDLE}", "WINFLOW_LOG_FORMAT=json"],
    "ExposedPorts": {"8080/tcp": {}, "9443/tcp": {}},
    "Entrypoint": ["/winflow"],
    "Cmd": ["run"],
    "Labels": {
        "org.opencontainers.image.title": "winflow",
        "org.opencontainers.image.description": "Kubernetes operator for running Apache Airflow work on Windows nodes with least-privileged Active Directory identities (gMSA)",
        "org.opencontainers.image.source": "",
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.version": "dev",
        "org.opencontainers.image.revision": "unknown",
    },
}

ARCHITECTURES = {"x86_64": "amd64", "aarch64": "arm64"}


def log(message):
    print(f"image-archive: {message}", file=sys.stderr)


class Layer:
    """The files of one layer by their path in the image (no leading slash). A file's bytes
    are held (small files) or copied from a host file when the layer is written; the host
    file's size and modification time are taken when it is added."""

    def __init__(self):
        self.entries = {}
        self.keys = {}  # key() by its salt (entries are not changed once a key is taken)

    def _entry(self, path, kind, mode, owner=0, mtime=0):
        self.add_parents(path)
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.mode, info.uid, info.gid = kind, mode, owner, owner
        info.uname = info.gname = ""
        info.mtime = mtime
        return info

    def add_parents(self, path):
        parent = os.path.dirname(path.strip("/"))
        if parent and parent not in self.entries:
            self.directory(parent)

    def directory(self, path, mode=0o755, owner=0):
        self.entries[path.strip("/")] = (self._entry(path, tarfile.DIRTYPE, mode, owner), None)

    def file(self, path, data, mode=0o644, owner=0):
        info = self._entry(path, tarfile.REGTYPE, mode, owner)
        info.size = len(data)
        self.entries[path.strip("/")] = (info, data)

    def copy(self, path, source, mode, mtime=False):
        """The host file `source` as `path`, read when the layer is written; `mtime` keeps
        the host file's modification time (whole seconds) instead of 1970-01-01."""
        stat = os.stat(source)
        info = self._entry(path, tarfile.REGTYPE, mode, 0, int(stat.st_mtime) if mtime else 0)
        info.size = stat.st_size
        self.entries[path.strip("/")] = (info, (str(source), stat.st_size, stat.st_mtime_ns))

    def symlink(self, path, target):
        info = self._entry(path, tarfile.SYMTYPE, 0o777)
        info.linkname = target
        self.entries[path.strip("/")] = (info, None)

    def executable(self, path, source):
        """The program at `source` as `path`, with the shared libraries ldd lists for it at
        the paths ldd shows (the dynamic loader among them); a static program needs none."""
        self.file(path, Path(source).read_bytes(), 0o755)
        for library in shared_libraries(source):
            real = Path(library).resolve()
            self.file(library, real.read_bytes(), real.stat().st_mode & 0o777)

    def tree(self, path, source, skip=lambda relative: False):
        """The directory `source` as `path`, recursively, without what `skip` (given the
        path relative to `source`) names: directories 0755, files 0755 or 0644 as their
        execute bits say (whatever the host's other bits: the image runs as another user),
        symbolic links as they are; files keep their modification time."""
        for directory, subdirectories, files in os.walk(source):
            relative_directory = os.path.relpath(directory, source)
            base = path if relative_directory == "." else f"{path}/{relative_directory}"
            self.directory(base)
            for name in list(subdirectories):
                relative = os.path.normpath(os.path.join(relative_directory, name))
                host = os.path.join(directory, name)
                if skip(relative):
                    subdirectories.remove(name)
                elif os.path.islink(host):
                    # os.walk does not descend into links to directories (followlinks=False).
                    self.symlink(f"{base}/{name}", os.readlink(host))
            for name in files:
                relative = os.path.normpath(os.path.join(relative_directory, name))
                host = os.path.join(directory, name)
                if skip(relative):
                    continue
                mode = os.lstat(host).st_mode
                if stat_module.S_ISLNK(mode):
                    self.symlink(f"{base}/{name}", os.readlink(host))
                elif stat_module.S_ISREG(mode):
                    self.copy(f"{base}/{name}", host, 0o755 if mode & 0o111 else 0o644, mtime=True)
                else:
                    log(f"leaving out {host}: neither a file, a directory nor a link")

    def key(self, *salt):
        """A hash of every entry's header and of its data's identity (the bytes' sha256, or
        the host file's path, size and modification time): equal keys, equal layers."""
        if salt in self.keys:
            return self.keys[salt]
        digest = hashlib.sha256()
        for part in salt:
            digest.update(repr(part).encode() + b"\0")
        for path in sorted(self.entries):
            info, data = self.entries[path]
            if isinstance(data, bytes):
                data = hashlib.sha256(data).hexdigest()
            header = (path, info.type, info.mode, info.uid, info.gid, info.mtime, info.size)
            header += (info.linkname,)
            digest.update(repr((header, data)).encode() + b"\0")
        self.keys[salt] = digest.hexdigest()
        return self.keys[salt]

    def write(self, fileobj, format=tarfile.USTAR_FORMAT):
        # ustar (the default): no PAX records, so any tar reader (tests/image.rs has a small
        # one) reads it. PAX only adds records where ustar cannot hold a field (long paths).
        with tarfile.open(fileobj=fileobj, mode="w", format=format, copybufsize=COPY_BUFFER) as tar:
            for path in sorted(self.entries):
                info, data = self.entries[path]
                if isinstance(data, tuple):
                    source, size, mtime_ns = data
                    with open(source, "rb") as handle:
                        now = os.fstat(handle.fileno())
                        if (now.st_size, now.st_mtime_ns) != (size, mtime_ns):
                            sys.exit(f"image-archive: {source} changed while read; run again")
                        tar.addfile(info, handle)
                else:
                    tar.addfile(info, io.BytesIO(data) if data is not None else None)

    def tar(self):
        buffer = io.BytesIO()
        self.write(buffer)
        return buffer.getvalue()

    def paths(self):
        return {f"/{path}" for path in self.entries}


class HashingWriter:
    """A file that also hashes and counts what is written to it."""

    def __init__(self, handle):
        self.handle, self.sha256, self.size = handle, hashlib.sha256(), 0

    def write(self, data):
        self.handle.write(data)
        self.sha256.update(data)
        self.size += len(data)
        return len(data)

    def tell(self):
        return self.size


def shared_libraries(program):
    """The absolute paths in `ldd program` (the vDSO has none); none for a static program."""
    result = subprocess.run(["ldd", program], capture_output=True, text=True)
    text = result.stdout + result.stderr
    if result.returncode != 0:
        if "not a dynamic executable" in text:
            return []
        sys.exit(f"image-archive: ldd {program} failed: {text.strip()}")
    libraries = []
    for line in result.stdout.splitlines():
        if "not found" in line:
            sys.exit(f"image-archive: {program} needs a library this machine lacks: {line.strip()}")
        words = line.split()
        if "=>" in words:
            words = words[words.index("=>") + 1 :]
        if words and words[0].startswith("/"):
            libraries.append(words[0])
    return libraries


def distroless_base(layer):
    """What distroless's nonroot images hold besides packages: users, groups, a home for
    nonroot, a world-writable /tmp and glibc's name service configuration."""
    layer.file("etc/passwd", PASSWD.encode())
    layer.file("etc/group", GROUP.encode())
    layer.file("etc/nsswitch.conf", NSSWITCH.encode())
    layer.directory("home/nonroot", 0o700, NONROOT)
    layer.directory("tmp", 0o1777)


def operator(binary):
    layer = Layer()
    distroless_base(layer)
    # Debian's ca-certificates bundle, the file distroless ships.
    layer.file(CA_BUNDLE.strip("/"), Path(CA_BUNDLE).read_bytes())
    layer.executable("winflow", binary)
    return layer, OPERATOR_CONFIG


def busybox(binary):
    layer = Layer()
    distroless_base(layer)
    layer.executable("bin/busybox", binary)
    applets = subprocess.run([binary, "--list"], capture_output=True, text=True, check=True)
    for applet in applets.stdout.split():
        if applet != "busybox":
            layer.symlink(f"bin/{applet}", "busybox")
    return layer, {"Env": [f"PATH={PATH}"], "Cmd": ["sh"]}


def pause(binary):
    # As upstream's build/pause/Dockerfile: the program alone, as its entrypoint.
    layer = Layer()
    layer.executable("pause", binary)
    return layer, {"Env": [f"PATH={PATH}"], "Entrypoint": ["/pause"]}


AIRFLOW_UID = 50000
AIRFLOW_HOME = "/opt/airflow"
AIRFLOW_DAGS = f"{AIRFLOW_HOME}/dags"
# The official Airflow image's user (uid 50000), root and nobody.
AIRFLOW_PASSWD = f"""root:x:0:0:root:/root:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
airflow:x:{AIRFLOW_UID}:{AIRFLOW_UID}:airflow:/home/airflow:/sbin/nologin
"""
AIRFLOW_GROUP = f"""root:x:0:
nobody:x:65534:
airflow:x:{AIRFLOW_UID}:
"""
# Left out of the interpreter's standard library (paths relative to it): its tests, IDLE,
# Tk and the turtle demos, the interpreter's own site-packages (the venv has its own, and
# does not see this one), config-X.Y-* (the static libpython and the build's makefiles) and
# the bytecode for `python -O` (*.opt-1.pyc, *.opt-2.pyc).
STDLIB_LEFT_OUT = {
    "test",
    "idlelib",
    "tkinter",
    "turtle.py",
    "turtledemo",
    "site-packages",
    "ctypes/test",
    "distutils/tests",
    "lib2to3/tests",
    "unittest/test",
}


def stdlib_left_out(relative):
    parts = relative.split("/")
    if relative in STDLIB_LEFT_OUT or parts[0].startswith("config-"):
        return True
    if len(parts) == 2 and parts[0] == "lib-dynload":
        # Tk's C half (it would bring X11 and its friends along).
        return parts[1].startswith("_tkinter.")
    if len(parts) >= 2 and parts[-2] == "__pycache__":
        # Bytecode for `python -O` and -OO, and the turtle's.
        return ".opt-" in parts[-1] or (len(parts) == 2 and parts[1].split(".")[0] == "turtle")
    return False


def interpreter_of(venv):
    """Where the venv's interpreter lives: sys.base_prefix, its standard library, LIBDIR
    (libpython) and its version, as the venv's python says."""
    script = (
        "import json, sys, sysconfig; print(json.dumps({'base_prefix': sys.base_prefix,"
        " 'stdlib': sysconfig.get_path('stdlib'), 'libdir': sysconfig.get_config_var('LIBDIR'),"
        " 'version': '%d.%d.%d' % sys.version_info[:3]}))"
    )
    python = f"{venv}/bin/python"
    result = subprocess.run([python, "-I", "-B", "-c", script], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"image-archive: {python} does not run: {result.stderr.strip()}")
    return json.loads(result.stdout)


def under(path, *roots):
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def libraries_outside(layers, roots, cache_dir, key):
    """The shared libraries (ldd's paths, the dynamic loader among them) that the ELF files
    of `layers` need and that are not under `roots` (those the layers hold, such as
    libpython or a wheel's bundled *.libs, which ldd finds through RPATH). Cached by `key`."""
    cached = cache_dir / f"airflow-libraries-{key[:16]}.json"
    if cached.exists():
        return json.loads(cached.read_text())
    started = time.monotonic()
    real_roots = [os.path.realpath(root) for root in roots]
    programs, libraries = 0, set()
    for layer in layers:
        for _, data in layer.entries.values():
            if not isinstance(data, tuple):
                continue
            with open(data[0], "rb") as handle:
                if handle.read(4) != b"\x7fELF":
                    continue
            programs += 1
            for library in shared_libraries(data[0]):
                library = os.path.normpath(library)
                if not under(library, *roots) and not under(os.path.realpath(library), *real_roots):
                    libraries.add(library)
    libraries = sorted(libraries)
    log(
        f"airflow: ldd on {programs} ELF files in {time.monotonic() - started:.1f}s:"
        f" {len(libraries)} libraries outside the venv and the interpreter"
    )
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = cached.with_name(f"{cached.name}.partial-{os.getpid()}")
    partial.write_text(json.dumps(libraries, indent=1) + "\n")
    partial.rename(cached)
    remove_stale(cache_dir, "airflow-libraries-", cached)
    return libraries


def airflow(args):
    """Airflow's worker: the interpreter's prefix and the venv at their host paths (the
    venv's links and pyvenv.cfg name them), the shared libraries they need, /etc, and the
    DAG folder's files, in four layers (largest changes last)."""
    venv = os.path.abspath(args.source)
    python = interpreter_of(venv)
    prefix, libdir, stdlib = python["base_prefix"], python["libdir"], python["stdlib"]
    executable = os.path.realpath(f"{venv}/bin/python")

    interpreter = Layer()
    for name in sorted(os.listdir(f"{prefix}/bin")):
        host = f"{prefix}/bin/{name}"
        if os.path.realpath(host) != executable:
            continue
        if os.path.islink(host):
            interpreter.symlink(host, os.readlink(host))
        else:
            interpreter.copy(host, host, 0o755, mtime=True)
    for host in sorted(Path(libdir).glob("libpython*.so*")):
        if host.is_symlink():
            interpreter.symlink(str(host), os.readlink(host))
        else:
            interpreter.copy(str(host), host, 0o755, mtime=True)
    interpreter.tree(stdlib, stdlib, stdlib_left_out)

    environment = Layer()
    environment.tree(venv, venv)

    # The venv's python is a chain of links that must end in the image, not only on the host.
    present = interpreter.paths() | environment.paths()
    hop = f"{venv}/bin/python"
    for _ in range(40):
        if hop not in present:
            sys.exit(f"image-archive: {venv}/bin/python leads to {hop}, which the image lacks")
        if not os.path.islink(hop):
            break
        hop = os.path.normpath(os.path.join(os.path.dirname(hop), os.readlink(hop)))

    # ldd's answers change with the ELF files (in the layers' keys) and with the libraries
    # installed on the machine (ld.so.cache is rewritten whenever a package adds some).
    salt = (SOURCE_DIGEST, tarfile.PAX_FORMAT)
    ld_cache = os.stat("/etc/ld.so.cache") if os.path.exists("/etc/ld.so.cache") else None
    ld_cache = ld_cache and (ld_cache.st_size, ld_cache.st_mtime_ns)
    ldd_key = repr((interpreter.key(*salt), environment.key(*salt), ld_cache))
    libraries = libraries_outside(
        [interpreter, environment],
        [venv, prefix],
        args.out_dir / "layers",
        hashlib.sha256(ldd_key.encode()).hexdigest(),
    )

    system = Layer()
    system.file("etc/passwd", AIRFLOW_PASSWD.encode())
    system.file("etc/group", AIRFLOW_GROUP.encode())
    system.file("etc/nsswitch.conf", NSSWITCH.encode())
    system.copy(CA_BUNDLE, CA_BUNDLE, 0o644)
    # Where Debian's OpenSSL (the one the interpreter's ssl module links) looks by default.
    system.symlink("usr/lib/ssl/cert.pem", CA_BUNDLE)
    system.symlink("usr/lib/ssl/certs", os.path.dirname(CA_BUNDLE))
    system.directory("tmp", 0o1777)
    system.directory("home/airflow", 0o755, AIRFLOW_UID)
    system.directory(AIRFLOW_HOME, 0o755, AIRFLOW_UID)
    for library in libraries:
        real = os.path.realpath(library)
        system.copy(library, real, os.stat(real).st_mode & 0o777)

    dags = Layer()
    dags.directory(AIRFLOW_HOME, 0o755, AIRFLOW_UID)
    dags.directory(AIRFLOW_DAGS, 0o755, AIRFLOW_UID)
    if args.dags is not None:
        for directory, subdirectories, files in os.walk(args.dags):
            subdirectories[:] = sorted(name for name in subdirectories if name != "__pycache__")
            relative = os.path.relpath(directory, args.dags)
            base = AIRFLOW_DAGS if relative == "." else f"{AIRFLOW_DAGS}/{relative}"
            dags.directory(base, 0o755, AIRFLOW_UID)
            for name in files:
                host = Path(directory, name)
                if name.endswith(".pyc"):
                    continue
                mode = 0o755 if host.stat().st_mode & 0o111 else 0o644
                dags.file(f"{base}/{name}", host.read_bytes(), mode, AIRFLOW_UID)
    dag_files = sum(1 for info, _ in dags.entries.values() if info.isfile())
    if args.dags is not None and dag_files == 0:
        log(f"airflow: {args.dags} holds no files")

    runtime = {
        "User": f"{AIRFLOW_UID}:0",
        "WorkingDir": AIRFLOW_HOME,
        "Env": [
            f"PATH={venv}/bin:/usr/local/bin:/usr/bin:/bin",
            f"AIRFLOW_HOME={AIRFLOW_HOME}",
            "AIRFLOW__CORE__LOAD_EXAMPLES=False",
            f"AIRFLOW__CORE__DAGS_FOLDER={AIRFLOW_DAGS}",
            "PYTHONDONTWRITEBYTECODE=1",
        ],
        # No entrypoint: the KubernetesExecutor's pods give the whole command as args.
        "Cmd": ["python"],
    }
    layers = [
        ("system", f"shared libraries ({len(libraries)}), /etc, /tmp, {AIRFLOW_HOME}", system),
        ("python", f"Python {python['version']} at {prefix}", interpreter),
        ("venv", f"the venv at {venv}", environment),
        ("dags", f"{dag_files} files in {AIRFLOW_DAGS}", dags),
    ]
    return layers, runtime


IMAGES = {"operator": operator, "busybox": busybox, "pause": pause, "airflow": airflow}
SOURCE_DIGEST = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()


def remove_stale(directory, prefix, *keep):
    """Removes the files of `directory` whose names start with `prefix`, but `keep`."""
    for stale in directory.glob(f"{prefix}*"):
        if stale not in keep:
            stale.unlink()


def cached_layer(cache_dir, image, slug, layer):
    """The layer as a tar in `cache_dir`, written unless a tar of the same key is there:
    its path, sha256 and size."""
    key = layer.key(SOURCE_DIGEST, tarfile.PAX_FORMAT)
    tar_path = cache_dir / f"{image}-{slug}-{key[:16]}.tar"
    meta_path = tar_path.with_name(f"{tar_path.stem}.json")
    if tar_path.exists() and meta_path.exists():
        meta = json.loads(meta_path.read_text())
        if tar_path.stat().st_size == meta["size"]:
            return tar_path, meta["sha256"], meta["size"]
    started = time.monotonic()
    cache_dir.mkdir(parents=True, exist_ok=True)
    partial = tar_path.with_name(f"{tar_path.name}.partial-{os.getpid()}")
    with open(partial, "wb") as handle:
        writer = HashingWriter(handle)
        layer.write(writer, tarfile.PAX_FORMAT)
    meta = {"sha256": writer.sha256.hexdigest(), "size": writer.size}
    partial.rename(tar_path)
    meta_partial = meta_path.with_name(f"{meta_path.name}.partial-{os.getpid()}")
    meta_partial.write_text(json.dumps(meta) + "\n")
    meta_partial.rename(meta_path)
    log(
        f"{image}: wrote the {slug} layer ({len(layer.entries)} entries,"
        f" {writer.size / 2**20:.1f} MiB) in {time.monotonic() - started:.1f}s"
    )
    remove_stale(cache_dir, f"{image}-{slug}-", tar_path, meta_path)
    return tar_path, meta["sha256"], meta["size"]


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def tar_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.mode, info.mtime = 0o644, 0
    info.uname = info.gname = ""
    if isinstance(data, Path):
        info.size = data.stat().st_size
        with open(data, "rb") as handle:
            tar.addfile(info, handle)
    else:
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--reference", required=True)
    parser.add_argument("--dags", type=Path, help="airflow: the DAG folder to bake in")
    parser.add_argument("image", choices=sorted(IMAGES))
    parser.add_argument("source", type=Path, help="the program (airflow: the venv)")
    args = parser.parse_args()

    machine = platform.machine()
    if machine not in ARCHITECTURES:
        sys.exit(f"image-archive: no image architecture known for {machine}")
    # (sha256, content: bytes or a cached tar, history's created_by) per layer, bottom first.
    layers = []
    if args.image == "airflow":
        named, runtime = airflow(args)
        for slug, description, layer in named:
            tar_path, digest, size = cached_layer(args.out_dir / "layers", args.image, slug, layer)
            layers.append((digest, tar_path, f"hack/image.sh {args.image}: {description}"))
            mib = size / 2**20
            log(f"{args.image}: {slug} layer: {mib:.1f} MiB, sha256:{digest[:16]}, {description}")
    else:
        layer, runtime = IMAGES[args.image](str(args.source))
        layer_tar = layer.tar()
        digest = hashlib.sha256(layer_tar).hexdigest()
        layers.append((digest, layer_tar, f"hack/image.sh {args.image}"))
    config = canonical(
        {
            "architecture": ARCHITECTURES[machine],
            "os": "linux",
            "created": EPOCH,
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{d}" for d, _, _ in layers]},
            "history": [{"created": EPOCH, "created_by": by} for _, _, by in layers],
        }
    )
    config_digest = hashlib.sha256(config).hexdigest()
    config_name = f"{config_digest}.json"
    layer_names = [f"{digest}/layer.tar" for digest, _, _ in layers]
    manifest = canonical(
        [{"Config": config_name, "RepoTags": [args.reference], "Layers": layer_names}]
    )

    key = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), manifest, config):
        key.update(hashlib.sha256(part).digest())
    tarball = args.out_dir / f"{args.image}-{key.hexdigest()[:16]}.tar"
    if tarball.exists():
        log(f"{args.image}: {tarball} is up to date")
    else:
        started = time.monotonic()
        args.out_dir.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(f".partial-{os.getpid()}")
        ustar = tarfile.USTAR_FORMAT
        with tarfile.open(partial, mode="w", format=ustar, copybufsize=COPY_BUFFER) as tar:
            tar_member(tar, config_name, config)
            for name, (_, content, _) in zip(layer_names, layers):
                tar_member(tar, name, content)
            tar_member(tar, "manifest.json", manifest)
        partial.rename(tarball)
        size = tarball.stat().st_size / 2**20
        log(f"{args.image}: wrote {tarball} ({size:.1f} MiB) in {time.monotonic() - started:.1f}s")
    for stale in args.out_dir.glob(f"{args.image}-*.tar"):
        if stale != tarball:
            log(f"{args.image}: removing the older {stale}")
            stale.unlink()
    print(tarball)


if __name__ == "__main__":
    main()
