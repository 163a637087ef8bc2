"""Where an export keeps its objects: `folder/<name>/<name>.json|yaml`, read by the loader
(export.py) and by the load report (load_report.py)."""

from __future__ import annotations

from pathlib import PurePosixPath


def object_files(files, folder: str) -> list[str]:
    """`folder/<name>/<name>.json|yaml` entries, in name order; a folder whose one JSON/YAML
    file has another name (`agents/<name>/agent.yaml`) counts too."""
    by_folder: dict[str, list[str]] = {}
    for rel in files.names():
        parts = PurePosixPath(rel).parts
        if len(parts) == 3 and parts[0] == folder and parts[2].rsplit(".", 1)[-1] in ("json", "yaml", "yml"):
            by_folder.setdefault(parts[1], []).append(rel)
    found = []
    for name, rels in sorted(by_folder.items()):
        named = [r for r in rels if PurePosixPath(r).stem == name]
        found += named or (rels if len(rels) == 1 else [])
    return sorted(found)
