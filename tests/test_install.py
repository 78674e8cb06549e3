"""Install test: `pip install .` into a fresh virtual environment builds both native packages (CPU and,
where torch has CUDA and nvcc exists, CUDA) and they import from outside the source tree."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import venv
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]


def _cuda_toolkit() -> bool:
    return torch.version.cuda is not None and any(
        Path(p, "bin", "nvcc").is_file() for p in (os.environ.get("CUDA_HOME", ""), "/usr/local/cuda") if p)


@pytest.mark.slow
def test_fresh_venv_pip_install(tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(env_dir)
    py = env_dir / "bin" / "python"
    # Reuse this environment's torch (and the other dependencies) through a .pth file rather than
    # installing 5 GB again; gaussiantalker itself is built and installed fresh.
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    deps = Path(torch.__file__).resolve().parents[1]
    Path(site, "_gt_deps.pth").write_text(str(deps) + "\n")
    env = dict(os.environ, TORCH_CUDA_ARCH_LIST="8.0", MAX_JOBS=str(os.cpu_count() or 2))
    env.pop("PYTHONPATH", None)
    proc = subprocess.run([str(py), "-m", "pip", "install", "--no-build-isolation", "--no-deps", "-q", str(REPO)],
                          env=env, capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    probe = (
        "import json, diff_gaussian_rasterization as d, simple_knn as k, gaussiantalker as g;"
        "print(json.dumps({'d': d.build_info(), 'k': k.build_info(), 'd_file': d.__file__, 'g': g.__version__, 'g_file': g.__file__}))"
    )
    out = subprocess.run([str(py), "-c", probe], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert str(REPO) not in info["d_file"]  # the installed copy, not the source tree
    assert info["d"]["cpu"] and info["k"]["cpu"]
    # the config presets travel with the package, so `--config 64_dim_1_transformer` works anywhere
    presets = Path(info["g_file"]).parent / "configs"
    for preset in ("64_dim_1_transformer.py", "64_dim_2_transformer.py", "cpu_small.py"):
        assert (presets / preset).is_file(), f"{preset} not installed in {presets}"
    if _cuda_toolkit():
        assert info["d"]["cuda"] and info["k"]["cuda"], info
        assert info["d"]["cuda_arch"] == ["8.0"]
    # the installed extension really renders
    render = (
        "import torch; from diff_gaussian_rasterization import *;"
        "st = make_settings(look_at((0,0,-3),(0,0,0)), 0.4, 0.4, 16, 16);"
        "o = rasterize_gaussians(st, torch.zeros(1,3), torch.full((1,1),0.9), colors_precomp=torch.ones(1,3),"
        " scales=torch.full((1,3),0.3), rotations=torch.tensor([[1.,0,0,0]]));"
        "print(float(o.alpha.max()))"
    )
    out = subprocess.run([str(py), "-c", render], cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert float(out.stdout.strip()) > 0.8


def test_import_never_compiles_and_missing_extension_is_explained(tmp_path):
    """Without the compiled module the package still imports, and using it names the build command."""
    pkg = REPO / "submodules" / "diff-gaussian-rasterization" / "diff_gaussian_rasterization"
    copy = tmp_path / "diff_gaussian_rasterization"
    copy.mkdir()
    for f in pkg.glob("*.py"):
        (copy / f.name).write_text(f.read_text())
    code = (
        "import sys; sys.path.insert(0, %r)\n"
        # an editable install's finder would still locate the real _C by its full name: hide it
        "sys.meta_path = [f for f in sys.meta_path if 'Editable' not in type(f).__name__ + getattr(f, '__name__', '')]\n"
        "import diff_gaussian_rasterization as d\n"
        "assert d.__file__.startswith(%r), d.__file__\n"
        "info = d.build_info(); assert info['cpu'] is False and 'pip install' in info['error']\n"
        "try:\n"
        "    d.rasterize_gaussians(d.make_settings(d.look_at((0,0,-3),(0,0,0)), .4, .4, 8, 8), *[__import__('torch').zeros(1,3), __import__('torch').ones(1,1)], colors_precomp=__import__('torch').ones(1,3), scales=__import__('torch').ones(1,3), rotations=__import__('torch').ones(1,4))\n"
        "except d.ExtensionNotBuiltError as e:\n"
        "    assert 'pip install --no-build-isolation' in str(e); print('ok')\n"
    ) % (str(tmp_path), str(tmp_path))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.stdout.strip() == "ok", out.stderr


# --------------------------------------------------------------------------------------------------
# scripts/setup.sh picks a supported interpreter (mediapipe 0.10.21 has no wheel for Python 3.13)


def _fake_python(path: Path, version: str, log: Path) -> None:
    """A stand-in interpreter: answers `-c ...` (the version probe) with ``version`` and records any
    other call (`-m venv DIR`) in ``log``, then fails, so setup.sh stops right after choosing."""
    path.write_text(f"#!/bin/sh\nif [ \"$1\" = -c ]; then echo {version}; exit 0; fi\n"
                    f"echo \"$(basename \"$0\") $*\" >> {log}\nexit 3\n")
    path.chmod(0o755)


def _run_setup(tmp_path: Path, pythons: dict, **env_extra):
    """Run scripts/setup.sh with only the fake interpreters (and `dirname`) on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    log = tmp_path / "calls.log"
    for name, version in pythons.items():
        _fake_python(bin_dir / name, version, log)
    for tool in ("dirname", "basename"):
        if not (bin_dir / tool).exists():
            (bin_dir / tool).symlink_to(subprocess.run(["which", tool], capture_output=True, text=True,
                                                       check=True).stdout.strip())
    env = {"PATH": str(bin_dir), "HOME": str(tmp_path), "GT_VENV": str(tmp_path / "venv"), **env_extra}
    proc = subprocess.run(["/bin/bash", str(REPO / "scripts" / "setup.sh")], env=env, capture_output=True,
                          text=True, timeout=60)
    calls = log.read_text().splitlines() if log.is_file() else []
    return proc, calls


def test_setup_script_skips_an_unsupported_python3(tmp_path):
    proc, calls = _run_setup(tmp_path, {"python3": "3.13", "python3.12": "3.12", "python3.11": "3.11"})
    assert calls == [f"python3.12 -m venv {tmp_path / 'venv'}"], (calls, proc.stderr)
    assert proc.returncode == 3  # the fake's own failure, after the choice


def test_setup_script_stops_at_once_without_a_supported_python(tmp_path):
    proc, calls = _run_setup(tmp_path, {"python3": "3.13", "python3.9": "3.9"})
    assert proc.returncode == 1 and calls == []
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    assert "python3=3.13" in lines[0] and "3.12" in lines[0] and "install" in lines[0]
    assert not (tmp_path / "venv").exists()
    # an explicit PYTHON of the wrong version is refused the same way, in one line
    proc, calls = _run_setup(tmp_path, {"python3.13": "3.13"}, PYTHON=str(tmp_path / "bin" / "python3.13"))
    assert proc.returncode == 1 and calls == [] and len(proc.stderr.strip().splitlines()) == 1
    assert "3.13" in proc.stderr


def test_setup_script_refuses_an_old_venv_of_an_unsupported_python(tmp_path):
    (tmp_path / "venv" / "bin").mkdir(parents=True)
    _fake_python(tmp_path / "venv" / "bin" / "python", "3.13", tmp_path / "calls.log")
    proc, calls = _run_setup(tmp_path, {"python3.12": "3.12"})
    assert proc.returncode == 1 and calls == [], proc.stderr
    assert "3.13" in proc.stderr and "remove" in proc.stderr


def test_setup_script_stops_before_installing_on_a_full_disk(tmp_path):
    """With too little disk for the environment, setup.sh says so at once (pip would fail half-way through torch)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "df").write_text("#!/bin/sh\necho 'Filesystem 1024-blocks Used Available Capacity Mounted on'\n"
                                "echo '/dev/vda 264000000 263000000 3000000 99% /'\n")  # 2.9 GB free
    (bin_dir / "df").chmod(0o755)
    (bin_dir / "awk").symlink_to(subprocess.run(["which", "awk"], capture_output=True, text=True,
                                                check=True).stdout.strip())
    proc, calls = _run_setup(tmp_path, {"python3.12": "3.12"})
    assert proc.returncode == 1 and calls == [], proc.stderr
    assert "only 2 GB free" in proc.stderr and "needs about 10 GB" in proc.stderr and "GT_VENV" in proc.stderr
    assert not (tmp_path / "venv").exists()


def test_requires_python_matches_the_setup_script():
    """pyproject's requires-python admits exactly the versions setup.sh accepts."""
    import re

    text = (REPO / "pyproject.toml").read_text()
    spec = re.search(r'^requires-python\s*=\s*"([^"]+)"', text, re.M).group(1)
    from packaging.specifiers import SpecifierSet

    accepted = re.search(r'^SUPPORTED="([^"]+)"', (REPO / "scripts" / "setup.sh").read_text(), re.M).group(1).split()
    allowed = [f"3.{m}" for m in range(6, 16) if f"3.{m}.0" in SpecifierSet(spec)]
    assert allowed == accepted, (spec, accepted)


# --------------------------------------------------------------------------------------------------
# every imported distribution is declared; the README's manual install works in a fresh venv

# Import name -> distribution, for optional modules that may not be installed where the tests run.
_KNOWN_DISTRIBUTIONS = {"tensorflow": ["tensorflow-cpu", "tensorflow"], "google": ["protobuf"],
                        "transformers": ["transformers"], "skimage": ["scikit-image"],
                        "dlib": ["dlib-bin", "dlib"], "face_alignment": ["face-alignment"]}
# Imports made optional by their caller (an ImportError caught one call up), with the reason.
_OPTIONAL_BY_CALLER = {"tensorboard": "evaluate.py reads old TensorBoard event files if it can; the caller "
                                      "catches the ImportError and logs it"}
_OPENCV = {"opencv-python", "opencv-contrib-python", "opencv-python-headless", "opencv-contrib-python-headless"}


def _norm(name: str) -> str:
    import re

    return re.sub(r"[-_.]+", "-", name).lower()


def _declared() -> dict:
    """{"core": {dist, ...}, "<extra>": {dist, ...}} from pyproject.toml."""
    import re

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(reqs):
        return {_norm(re.split(r"[\s<>=!~;\[]", r, maxsplit=1)[0]) for r in reqs}

    out = {"core": names(project["dependencies"])}
    out.update({extra: names(reqs) for extra, reqs in project.get("optional-dependencies", {}).items()})
    return out


def _imports():
    """(module, file, optional) for every third-party module the package imports; ``optional`` when the
    import sits in a ``try`` whose handler catches ImportError (the code works without it)."""
    import ast

    def guarded(handlers) -> bool:
        for h in handlers:
            types = h.type.elts if isinstance(h.type, ast.Tuple) else [h.type]
            if any(isinstance(t, ast.Name) and t.id in ("ImportError", "ModuleNotFoundError") for t in types):
                return True
        return False

    found = []

    def visit(node, file, optional):
        if isinstance(node, ast.Try):
            inner = optional or guarded(node.handlers)
            for child in node.body:
                visit(child, file, inner)
            for child in node.handlers + node.orelse + node.finalbody:
                visit(child, file, optional)
            return
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for n in names:
            top = n.split(".")[0]
            if top not in sys.stdlib_module_names and top not in ("gaussiantalker", "diff_gaussian_rasterization",
                                                                   "simple_knn"):
                found.append((top, file, optional))
        for child in ast.iter_child_nodes(node):
            visit(child, file, optional)

    for f in sorted((REPO / "gaussiantalker").rglob("*.py")):
        visit(ast.parse(f.read_text()), f.relative_to(REPO), False)
    return found


def test_every_imported_distribution_is_declared():
    """Each third-party module the package imports (outside an ImportError guard) comes from a distribution
    declared in pyproject.toml, in the core dependencies or an extra; cv2 from the core, as exactly one
    OpenCV distribution (two would overwrite each other's cv2)."""
    from importlib.metadata import packages_distributions

    declared = _declared()
    everything = set().union(*declared.values())
    providers = packages_distributions()
    problems = []
    for module, file, optional in _imports():
        if optional or module in _OPTIONAL_BY_CALLER:
            continue
        dists = {_norm(d) for d in providers.get(module, []) + _KNOWN_DISTRIBUTIONS.get(module, [])}
        if not dists:
            problems.append(f"{module} ({file}): no installed distribution provides it")
        elif not dists & everything:
            problems.append(f"{module} ({file}): from {sorted(dists)}, none of them declared in pyproject.toml")
    assert not problems, "\n".join(problems)
    assert len(declared["core"] & _OPENCV) == 1, declared["core"] & _OPENCV
    # the one mediapipe itself requires, so pip installs no second cv2
    from importlib.metadata import requires

    mediapipe_cv = {_norm(r.split()[0].split(";")[0]) for r in requires("mediapipe") or []} & _OPENCV
    assert declared["core"] & _OPENCV == mediapipe_cv


def test_readme_manual_install_has_the_build_tools():
    """`pip install --no-build-isolation` builds with what is installed, and a fresh venv has no setuptools
    or wheel: the README's install lines before it install every build requirement of pyproject.toml."""
    import re

    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    build = {_norm(re.split(r"[\s<>=!~]", r, maxsplit=1)[0])
             for r in tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]}
    readme = (REPO / "README.md").read_text()
    section = readme.split("## Installing on a GPU machine", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    before, _ = block.split("--no-build-isolation", 1)
    installed = set()
    for line in before.splitlines():
        words = line.split("#", 1)[0].split()
        if words[:2] == ["pip", "install"]:
            installed |= {_norm(re.split(r"[<>=!~\[]", w.strip("\"'"), maxsplit=1)[0]) for w in words[2:]
                          if not w.startswith("-")}
    assert build <= installed, f"the README installs {sorted(installed)} before building; needs {sorted(build)}"
