"""The guest image: built offline from Debian packages, cached by a hash of its inputs.

Output (one directory per input hash under the cache): rootfs.img (raw ext4, no partition table, booted
directly with the kernel and initrd beside it), id_ed25519 (the rig's login key, baked in as root's
authorized key), manifest.json, and box/ (the same disk as a vagrant-libvirt box, made on demand).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .config import VAGRANT_DIR, Paths
from .proc import NULL_LOG, EventLog, RigError, run

# Bump when the build procedure changes in a way the inputs below do not show.
FORMAT = 3
# trixie's 6.12 kernel lets each controller set its own relative target port id; bookworm's 6.1 cannot
# (vagrant/README.md has the evidence). HACRIG_SUITE=bookworm builds the older guest to show it again.
SUITE = os.environ.get("HACRIG_SUITE", "trixie")
GUEST_PYTHON = {"trixie": "3.13", "bookworm": "3.11"}
IMAGE_SIZE = "3G"  # sparse; each VM writes into its own qcow2 overlay
IMAGE_DIR = VAGRANT_DIR / "image"

GUEST_PACKAGES = (
    "linux-image-amd64", "zstd", "systemd-sysv", "udev", "dbus", "kmod", "iproute2", "iputils-ping", "procps",
    "openssh-server", "python3", "python3-venv",
    "python3-rtslib-fb", "targetcli-fb", "open-iscsi", "multipath-tools", "sg3-utils", "lsscsi",
    "lvm2", "thin-provisioning-tools", "e2fsprogs",
    "nftables", "tcpdump", "netcat-openbsd", "strace", "less",
    # The Pacemaker baseline of issue #9 (tests/chaos/pacemaker.py): disabled at boot, started by the bench only.
    "pacemaker", "pacemaker-cli-utils", "corosync", "resource-agents", "fence-agents-scsi",
)
# Debian provides rtslib-fb (with the kernel's configfs layout it was tested against); pip must not replace it.
DEBIAN_PROVIDED = {"rtslib-fb"}
DPKG_EXCLUDES = ("/usr/share/man/*", "/usr/share/doc/*", "/usr/share/locale/*", "/usr/share/info/*")


@dataclass(frozen=True)
class GuestImage:
    directory: Path

    @property
    def rootfs(self) -> Path:
        return self.directory / "rootfs.img"

    @property
    def kernel(self) -> Path:
        return self.directory / "vmlinuz"

    @property
    def initrd(self) -> Path:
        return self.directory / "initrd.img"

    @property
    def key(self) -> Path:
        return self.directory / "id_ed25519"

    @property
    def manifest(self) -> dict:
        return json.loads((self.directory / "manifest.json").read_text())

    @property
    def box_file(self) -> Path:
        return self.directory / "box" / "hacrig.box"

    @property
    def box_name(self) -> str:
        return f"hacrig-{self.directory.name.removeprefix('image-')}"


def guest_requirements(pyproject: Path) -> list[str]:
    """hacontrol's runtime dependencies that the guest venv must get from the wheelhouse."""
    deps = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    return sorted(d for d in deps if _dist_name(d) not in DEBIAN_PROVIDED)


def _dist_name(spec: str) -> str:
    return re.split(r"[<>=!~;\[ ]", spec, maxsplit=1)[0].strip().lower().replace("_", "-")


def input_hash(requirements: list[str]) -> str:
    """Everything that decides the image's content; a change to any of it means a rebuild."""
    h = hashlib.sha256()
    h.update(json.dumps({"format": FORMAT, "suite": SUITE, "packages": GUEST_PACKAGES,
                         "excludes": DPKG_EXCLUDES, "requirements": requirements}).encode())
    for path in sorted(IMAGE_DIR.rglob("*")):
        if path.is_file():
            h.update(str(path.relative_to(IMAGE_DIR)).encode())
            h.update(oct(path.stat().st_mode & 0o777).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:16]


def debian_mirror(sources_dir: Path = Path("/etc/apt")) -> str:
    """The configured Debian mirror, read from the host's apt sources (deb822 or one-line format)."""
    candidates = sorted((sources_dir / "sources.list.d").glob("*.sources"))
    for path in candidates:
        for stanza in path.read_text().split("\n\n"):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.M)
            suites = re.search(r"^Suites:\s*(.+)$", stanza, re.M)
            if uris and suites and not re.search(r"-security|-updates|-backports", suites.group(1).split()[0]):
                return uris.group(1)
    lists = [sources_dir / "sources.list", *sorted((sources_dir / "sources.list.d").glob("*.list"))]
    for path in lists:
        if path.exists():
            for line in path.read_text().splitlines():
                m = re.match(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+(\S+)\s", line)
                if m and "security" not in m.group(1) and "-" not in m.group(2):
                    return m.group(1)
    raise RigError("no Debian mirror found in the host's apt sources")


def ensure_image(paths: Paths, log: EventLog = NULL_LOG, rebuild: bool = False) -> GuestImage:
    """Return the cached image for the current inputs, building it if missing (or if asked to)."""
    requirements = guest_requirements(paths.repo / "pyproject.toml")
    image = GuestImage(paths.cache / f"image-{input_hash(requirements)}")
    if (image.directory / "manifest.json").exists() and not rebuild:
        log("image.cached", dir=image.directory)
    else:
        t0 = time.monotonic()
        _build(image, requirements, paths, log)
        log("image.built", dir=image.directory, s=round(time.monotonic() - t0, 1))
    image.directory.touch()  # mtime = last used, for pruning
    _prune(paths.cache, keep=image.directory, log=log)
    return image


def _prune(cache: Path, keep: Path, log: EventLog, kept_images: int = 3) -> None:
    """Drop all but the most recently used images (each is ~0.5 GB), and any half-built one."""
    images = sorted((p for p in cache.glob("image-*") if p.is_dir() and p != keep), key=lambda p: p.stat().st_mtime,
                    reverse=True)
    for old in [p for p in images if p.name.endswith(".building")] + [
            p for p in images if not p.name.endswith(".building")][kept_images - 1:]:
        shutil.rmtree(old, ignore_errors=True)
        log("image.pruned", dir=old)


def _build(image: GuestImage, requirements: list[str], paths: Paths, log: EventLog) -> None:
    staging = image.directory.with_name(image.directory.name + ".building")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        wheels = staging / "wheelhouse"
        _download_wheels(requirements, wheels, log)
        run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hacontrol-rig", "-f", str(staging / "id_ed25519")],
            timeout=30, log=log)
        tree = staging / "tree"
        t0 = time.monotonic()
        _mmdebstrap(tree, staging / "id_ed25519.pub", wheels, requirements,
                    log_file=staging / "mmdebstrap.log", log=log)
        tree_s = time.monotonic() - t0
        _copy_boot_files(tree, staging)
        versions = _package_versions(tree)
        run(["mkfs.ext4", "-q", "-F", "-L", "hacrig-root", "-d", str(tree), str(staging / "rootfs.img"), IMAGE_SIZE],
            timeout=300, log=log)
        shutil.rmtree(tree)
        manifest = {"suite": SUITE, "packages": list(GUEST_PACKAGES), "requirements": requirements,
                    "versions": versions, "wheels": sorted(p.name for p in wheels.glob("*.whl")),
                    "built": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "mmdebstrap_s": round(tree_s, 1)}
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=2))
        shutil.rmtree(image.directory, ignore_errors=True)
        staging.rename(image.directory)
    except BaseException:
        shutil.rmtree(staging / "tree", ignore_errors=True)  # a half-built tree is 500 MB of nothing
        raise


def _download_wheels(requirements: list[str], dest: Path, log: EventLog) -> None:
    # The guest runs its Debian's Python (3.13 on trixie); every dependency is pure Python, so py3-none-any
    # wheels downloaded here install there. --only-binary refuses anything that would need a compiler.
    run([sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), "--only-binary=:all:",
         "--python-version", GUEST_PYTHON[SUITE], "--implementation", "py", "--platform", "any", "--abi", "none",
         *requirements], timeout=300, log=log)


def _mmdebstrap(tree: Path, pubkey: Path, wheels: Path, requirements: list[str], *, log_file: Path,
                log: EventLog) -> None:
    mirror = debian_mirror()
    cmd = ["env", f"HACRIG_ROOTFS={IMAGE_DIR / 'rootfs'}", f"HACRIG_PUBKEY={pubkey}", f"HACRIG_WHEELS={wheels}",
           f"HACRIG_DEPS={' '.join(requirements)}",
           "mmdebstrap", "--mode=root", "--variant=minbase", "--components=main",
           "--include=" + ",".join(GUEST_PACKAGES),
           "--aptopt=Acquire::Retries 3",
           *[f"--dpkgopt=path-exclude={p}" for p in DPKG_EXCLUDES],
           f"--customize-hook={IMAGE_DIR / 'customize'} \"$1\"",
           SUITE, str(tree), f"deb {mirror} {SUITE} main"]
    proc = run(cmd, timeout=900, check=False, log=log)
    log_file.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise RigError(f"mmdebstrap failed (exit {proc.returncode}); see {log_file}\n{proc.stderr[-3000:]}")


def _copy_boot_files(tree: Path, dest: Path) -> None:
    kernels = sorted((tree / "boot").glob("vmlinuz-*"))
    initrds = sorted((tree / "boot").glob("initrd.img-*"))
    if len(kernels) != 1 or len(initrds) != 1:
        raise RigError(f"expected one kernel and one initrd in the guest tree, found {kernels} {initrds}")
    shutil.copyfile(kernels[0], dest / "vmlinuz")
    shutil.copyfile(initrds[0], dest / "initrd.img")


def _package_versions(tree: Path) -> dict[str, str]:
    status = (tree / "var/lib/dpkg/status").read_text()
    wanted = {"linux-image-amd64", "python3", "python3-rtslib-fb", "open-iscsi", "multipath-tools", "sg3-utils",
              "targetcli-fb", "systemd"}
    versions = {}
    for stanza in status.split("\n\n"):
        name = re.search(r"^Package: (\S+)", stanza, re.M)
        version = re.search(r"^Version: (\S+)", stanza, re.M)
        if name and version and (name.group(1) in wanted or name.group(1).startswith("linux-image-6")):
            versions[name.group(1)] = version.group(1)
    return versions


def ensure_box(image: GuestImage, log: EventLog = NULL_LOG) -> Path:
    """The image as a vagrant-libvirt box (qcow2 + metadata.json in a tar), built once per image."""
    if image.box_file.exists():
        return image.box_file
    box_dir = image.directory / "box"
    shutil.rmtree(box_dir, ignore_errors=True)
    box_dir.mkdir()
    run(["qemu-img", "convert", "-O", "qcow2", str(image.rootfs), str(box_dir / "box.img")], timeout=300, log=log)
    (box_dir / "metadata.json").write_text(json.dumps({"provider": "libvirt", "format": "qcow2", "virtual_size": 3}))
    partial = box_dir / "hacrig.box.partial"
    run(["tar", "-C", str(box_dir), "-cf", str(partial), "box.img", "metadata.json"], timeout=300, log=log)
    (box_dir / "box.img").unlink()
    partial.rename(image.box_file)
    log("image.box", path=image.box_file)
    return image.box_file
