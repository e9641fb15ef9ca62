#!/usr/bin/env python3
"""Writes one container image as a docker-archive tarball (what `docker save` writes and
`ctr images import` reads: manifest.json, the image config and one uncompressed layer) and
prints its path. hack/image.sh runs it; the images themselves are described there.

    image-archive.py --out-dir DIR --reference REF {operator|busybox|pause} BINARY

The tarball is DIR/<image>-<hash>.tar, where the hash covers the manifest and the config
(whose diff_id is the layer's sha256, so every byte of every file) and this script's own
source. Equal inputs give equal bytes: every entry is owned by number, dated 1970-01-01 and
written in path order. An existing tarball of that name is reused; the others of the same
image are removed. Python 3 standard library only; progress goes to stderr.
"""
import argparse
import hashlib
import io
import json
import os
import platform
import subprocess
import sys
import tarfile
from pathlib import Path

NONROOT = 65532
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
EPOCH = "1970-01-01T00:00:00Z"

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
    """The files of one layer by their path in the image (no leading slash)."""

    def __init__(self):
        self.entries = {}

    def _entry(self, path, kind, mode, owner=0):
        self.add_parents(path)
        info = tarfile.TarInfo(path.strip("/"))
        info.type, info.mode, info.uid, info.gid = kind, mode, owner, owner
        info.uname = info.gname = ""
        info.mtime = 0
        return info

    def add_parents(self, path):
        parent = os.path.dirname(path.strip("/"))
        if parent and parent not in self.entries:
            self.directory(parent)

    def directory(self, path, mode=0o755, owner=0):
        self.entries[path.strip("/")] = (self._entry(path, tarfile.DIRTYPE, mode, owner), None)

    def file(self, path, data, mode=0o644):
        info = self._entry(path, tarfile.REGTYPE, mode)
        info.size = len(data)
        self.entries[path.strip("/")] = (info, data)

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

    def tar(self):
        buffer = io.BytesIO()
        # ustar: no PAX records, so any tar reader (tests/image.rs has a small one) reads it.
        with tarfile.open(fileobj=buffer, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for path in sorted(self.entries):
                info, data = self.entries[path]
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buffer.getvalue()


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


IMAGES = {"operator": operator, "busybox": busybox, "pause": pause}


def canonical(value):
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def tar_member(tar, name, data):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0
    info.uname = info.gname = ""
    tar.addfile(info, io.BytesIO(data))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out-dir", required=True, type=Path)
    parser.add_argument("--reference", required=True)
    parser.add_argument("image", choices=sorted(IMAGES))
    parser.add_argument("binary", type=Path)
    args = parser.parse_args()

    machine = platform.machine()
    if machine not in ARCHITECTURES:
        sys.exit(f"image-archive: no image architecture known for {machine}")
    layer, runtime = IMAGES[args.image](str(args.binary))
    layer_tar = layer.tar()
    layer_digest = hashlib.sha256(layer_tar).hexdigest()
    config = canonical(
        {
            "architecture": ARCHITECTURES[machine],
            "os": "linux",
            "created": EPOCH,
            "config": runtime,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
            "history": [{"created": EPOCH, "created_by": f"hack/image.sh {args.image}"}],
        }
    )
    config_digest = hashlib.sha256(config).hexdigest()
    config_name, layer_name = f"{config_digest}.json", f"{layer_digest}/layer.tar"
    manifest = canonical(
        [{"Config": config_name, "RepoTags": [args.reference], "Layers": [layer_name]}]
    )

    key = hashlib.sha256()
    for part in (Path(__file__).read_bytes(), manifest, config):
        key.update(hashlib.sha256(part).digest())
    tarball = args.out_dir / f"{args.image}-{key.hexdigest()[:16]}.tar"
    if tarball.exists():
        log(f"{args.image}: {tarball} is up to date")
    else:
        args.out_dir.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_suffix(f".partial-{os.getpid()}")
        with tarfile.open(partial, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            tar_member(tar, config_name, config)
            tar_member(tar, layer_name, layer_tar)
            tar_member(tar, "manifest.json", manifest)
        partial.rename(tarball)
        log(f"{args.image}: wrote {tarball} ({tarball.stat().st_size / 2**20:.1f} MiB)")
    for stale in args.out_dir.glob(f"{args.image}-*.tar"):
        if stale != tarball:
            log(f"{args.image}: removing the older {stale}")
            stale.unlink()
    print(tarball)


if __name__ == "__main__":
    main()
