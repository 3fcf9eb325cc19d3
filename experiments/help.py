"""`kvbench --help`: the config groups with their options, and config.yaml's keys with their
comments, read from the config tree itself so that the help cannot go stale."""

from __future__ import annotations

from importlib.resources import files

USAGE = """\
kvbench: KV-cache memory of LLM serving under static, paged and prefix-shared allocation.

usage:  kvbench [group=option ...] [key=value ...]     one job, into results/runs/<time>/
        kvbench sweep=NAME | kvbench -m key=v1,v2 ...  a multirun, into results/<sweep>/<time>/
        kvbench-report DIR                             report.md / report.csv of every run
        kvbench-plot DIR                               DIR/figures/ from those runs

Config groups (group=option):"""

FOOTER = """\
Every option's keys can be overridden too (allocator.block_size=32, workload.max_requests=100);
`kvbench [overrides] --cfg job` prints the composed config. Hydra's own flags: --hydra-help."""

GROUPS = ("allocator", "workload", "sampling", "model", "backend", "experiment", "sweep")


def _describe(group: str, option: str) -> str:
    """The first comment line of an option's file that is not a @package directive."""
    path = files("experiments.conf").joinpath(f"{group}/{option}.yaml")
    try:
        lines = path.read_text().splitlines()
    except OSError:  # an option from a plugin (hydra/launcher=joblib): no file of ours
        return ""
    for line in lines:
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if text and not text.startswith("@package"):
            return text
    return ""


def _shorten(text: str, width: int) -> str:
    if len(text) <= width:
        return text
    return text[: width - 3].rsplit(" ", 1)[0].rstrip(",;:") + "..."


def _options() -> dict[str, list[str]]:
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    with initialize_config_module("experiments.conf", version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        top = [g for g in GROUPS if g in loader.list_groups("")]
        top += [g for g in loader.list_groups("") if g not in (*GROUPS, "hydra")]
        groups = [x for g in top for x in (g, *(f"{g}/{s}" for s in loader.list_groups(g)))]
        out = {g: loader.get_group_options(g) for g in groups}
        out["hydra/launcher"] = loader.get_group_options("hydra/launcher")
    return out


def _config_keys() -> list[str]:
    """config.yaml from the line after its defaults list up to its hydra section."""
    lines = files("experiments.conf").joinpath("config.yaml").read_text().splitlines()
    body = []
    for line in lines[1:]:  # after the title comment
        if line.startswith("hydra:"):
            break
        if line.strip() and not line.startswith(("defaults:", "  - ")):
            body.append("  " + line)
    return body


def help_text() -> str:
    out = [USAGE]
    for group, options in _options().items():
        out.append(f"  {group}")
        for option in options:
            about = _describe(group, option) if group != "hydra/launcher" else ""
            out.append(f"    {option:<16}{_shorten(about, 78)}".rstrip())
    out += ["", "Keys (key=value; nested keys with dots: engine.max_num_seqs=64):"]
    out += _config_keys()
    out += ["", FOOTER]
    return "\n".join(out)
