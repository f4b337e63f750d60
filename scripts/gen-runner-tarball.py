#!/usr/bin/env python3
"""Write a runner-like tarball: the layout of actions/runner (root scripts, bin/, externals/),
about 3,000 files, about 460 MB unpacked and about 210 MB gzip'd (half random, half text, like
.NET assemblies and node modules). Deterministic for a given seed.

Usage: gen-runner-tarball.py OUT.tar.gz [--version 2.999.0] [--scale 1.0]
"""
import argparse
import os
import random
import shutil
import subprocess
import tempfile


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--scale", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    text = ("Microsoft.Extensions.DependencyInjection System.Private.CoreLib runner worker "
            "node_modules require('path') module.exports = function () { return 42; };\n")
    text_block = (text * (1 + (1 << 20) // len(text)))[: 1 << 20].encode()

    def content(size):
        # Half incompressible, half text: gzip gets it to a little under half, as on the real one.
        random_part = rng.randbytes(size // 2)
        text_part = (text_block * (1 + size // len(text_block)))[: size - len(random_part)]
        out = bytearray()
        step = 64 << 10
        for i in range(0, max(len(random_part), len(text_part)), step):
            out += random_part[i:i + step]
            out += text_part[i:i + step]
        return bytes(out)

    work = tempfile.mkdtemp(prefix="runner-tarball-")
    try:
        files = []
        for name in ["config.sh", "run.sh", "env.sh", "safe_sleep.sh", "run-helper.sh.template",
                     "run-helper.cmd.template"]:
            files.append((name, 2_000, 0o755))
        # bin/: ~1,000 assemblies, a few large ones.
        for i in range(int(1000 * args.scale)):
            size = int(rng.lognormvariate(10.5, 1.3))
            files.append((f"bin/Assembly{i:04d}.dll", min(size, 8 << 20), 0o644))
        for name, size in [("bin/Runner.Listener", 150_000), ("bin/Runner.Worker", 150_000),
                           ("bin/libcoreclr.so", 7 << 20), ("bin/libclrjit.so", 3 << 20),
                           ("bin/runsvc.sh", 1_000)]:
            files.append((name, int(size * max(args.scale, 0.01)), 0o755))
        # externals/: node binaries and ~2,000 module files.
        for major in ["node16", "node20"]:
            files.append((f"externals/{major}/bin/node", int(90 * args.scale * (1 << 20)), 0o755))
            for i in range(int(1000 * args.scale)):
                size = int(rng.lognormvariate(8.5, 1.2))
                files.append((f"externals/{major}/lib/node_modules/pkg{i // 20:02d}/lib/f{i:04d}.js",
                              min(size, 2 << 20), 0o644))
        total = sum(size for _, size, _ in files)
        target = int(460 * args.scale * (1 << 20))
        # Spread what is missing over the assemblies.
        missing = max(target - total, 0)
        dlls = [i for i, (name, _, _) in enumerate(files) if name.endswith(".dll")]
        for i in dlls:
            name, size, mode = files[i]
            files[i] = (name, size + missing // len(dlls), mode)
        for name, size, mode in files:
            path = os.path.join(work, "layout", name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "wb") as handle:
                handle.write(content(size))
            os.chmod(path, mode)
        os.symlink("node", os.path.join(work, "layout/externals/node20/bin/nodejs"))
        subprocess.run(["tar", "-C", os.path.join(work, "layout"), "--owner=0", "--group=0",
                        "-czf", args.out, "."], check=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
