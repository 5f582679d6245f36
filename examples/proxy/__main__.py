"""``python -m examples.proxy`` (from the repository root) or ``python examples/proxy``
(from anywhere: then the checkout's root is not on sys.path, so the installed cclb_wire
is the one used)."""

import sys

if __package__:
    from .app import main
else:  # run as a directory: load it as the package ``cclb_proxy`` so relative imports work
    import importlib.util
    from pathlib import Path

    here = Path(__file__).resolve().parent
    sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != here]  # its modules are not top-level
    spec = importlib.util.spec_from_file_location("cclb_proxy", here / "__init__.py", submodule_search_locations=[str(here)])
    assert spec is not None and spec.loader is not None
    package = importlib.util.module_from_spec(spec)
    sys.modules["cclb_proxy"] = package
    spec.loader.exec_module(package)
    from cclb_proxy.app import main  # type: ignore[no-redef]

sys.exit(main())
