"""The one plugin manager: built-ins, then entry points, then local plugin files.

Built-in methods and tasks are listed in ``DEFAULT_PLUGINS`` and registered exactly like
third-party plugins. Third parties publish an entry point in the group ``peftbench`` or
pass a local file with ``--plugins FILE.py`` / ``PEFTBENCH_PLUGINS``.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import importlib.util
import os
import re
import sys
from pathlib import Path

import pluggy

from . import hookspecs
from .errors import PluginError, check_file, closest, first_line

DEFAULT_PLUGINS = (
    "peftbench_plugins.full",
    "peftbench_plugins.bitfit",
    "peftbench_plugins.lora",
    "peftbench_plugins.adapter",
    "peftbench_plugins.prefix",
    "peftbench_plugins.base",
    "peftbench_plugins.peft_bridge",
    "peftbench_tasks.metrics",
    "peftbench_tasks.glue",
    "peftbench_tasks.trec",
    "peftbench_tasks.e2e",
)
ENTRY_POINT_GROUP = "peftbench"
NAME_RE = re.compile(r"^[a-z][a-z0-9_-]*$")

pm = pluggy.PluginManager("peftbench")
pm.add_hookspecs(hookspecs)

_defaults_loaded = False
_loaded_files: dict[Path, str] = {}
_origins: dict[str, dict] = {}  # plugin name -> where it came from (entry-point distribution)


def load_plugins(files=()):
    """Load built-ins and entry points (once), then each local plugin file (once each)."""
    global _defaults_loaded
    if not _defaults_loaded:
        # set first: a plugin's hook that calls get_methods() while its entry point is checked must not load again
        _defaults_loaded = True
        try:
            for name in DEFAULT_PLUGINS:
                if not pm.has_plugin(name):
                    pm.register(importlib.import_module(name), name=name)
            _load_entry_points()
        except BaseException:
            _defaults_loaded = False
            raise
    env_files = [f for f in re.split(r"[,%s]" % re.escape(os.pathsep), os.environ.get("PEFTBENCH_PLUGINS", "")) if f]
    for path in [*env_files, *files]:
        load_plugin_file(path)
    _check_hooks()


def _normalize(name: str) -> str:
    """A distribution name as packaging compares them: peftbench_hp.extras = peftbench-hp-extras."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _load_entry_points():
    allow = os.environ.get("PEFTBENCH_LOAD_PLUGINS")
    allowed = None if allow is None else {_normalize(s.strip()) for s in allow.split(",") if s.strip()}
    matched = set()
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        dist = ep.dist.name if ep.dist else ""
        if allowed is not None:
            hit = {_normalize(ep.name), _normalize(dist)} & allowed
            if not hit:
                continue
            matched |= hit
        where = f"plugin {ep.name!r} (package {dist or '?'})"
        if pm.has_plugin(ep.name):
            other = _origins.get(ep.name, {}).get("distribution")
            if other == (dist or None):
                continue  # this entry point, loaded by an earlier call that stopped at a later one's error
            raise PluginError(f"{where}: another plugin is named {ep.name!r} too (package {other or 'peftbench'}); "
                              "entry-point names in the group 'peftbench' must be unique: rename one, or set "
                              "PEFTBENCH_LOAD_PLUGINS to load one of them")
        try:
            module = ep.load()
        except (Exception, SystemExit) as e:  # a broken third-party package must not be a traceback (nor an exit)
            raise PluginError(
                f"{where} failed to import: {type(e).__name__}: "
                f"{first_line(e)}; fix or uninstall it, or set PEFTBENCH_LOAD_PLUGINS to skip it"
            ) from e
        _register(module, ep.name, where, ep.name)
        _origins[ep.name] = {"kind": "entry point", "distribution": dist or None,
                             "version": ep.dist.version if ep.dist else None}
    if allowed is not None and allowed - matched:
        print(f"warning: PEFTBENCH_LOAD_PLUGINS names {', '.join(sorted(allowed - matched))}, which no installed "
              f"plugin (entry point in the group 'peftbench') is called; `pip list` shows the packages",
              file=sys.stderr)


def load_plugin_file(path) -> str:
    """Import a local ``.py`` plugin file and register it; returns its plugin name."""
    p = Path(path).expanduser().resolve()
    if p in _loaded_files:
        return _loaded_files[p]
    check_file(p, "the path of a .py plugin file", PluginError)
    module_name = "peftbench_local_" + re.sub(r"\W", "_", p.stem) + "_" + hashlib.sha1(str(p).encode()).hexdigest()[:8]
    spec = importlib.util.spec_from_file_location(module_name, p)
    if spec is None or spec.loader is None:
        raise PluginError(f"plugin file {path} is not an importable Python file; give it a .py suffix")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses (and pickling) look the module up while it runs
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as e:  # sys.exit() in a plugin must not end peftbench unexplained
        del sys.modules[module_name]
        raise PluginError(f"plugin file {path} failed to import: {type(e).__name__}: {first_line(e)}") from e
    name = str(p)
    _register(module, name, f"plugin file {path}", str(path))
    _loaded_files[p] = name
    return name


def _register(module, name: str, where: str, label: str) -> None:
    """Register a plugin module (a local file or an entry point's object) after checking it: it defines
    peftbench hooks, each register-hook registers something, and pluggy accepts it; else one line."""
    # what pluggy registers: functions marked @peftbench.hookimpl, named as their hook or by specname=
    hooks = {n: (pm.parse_hookimpl_opts(module, n) or {}).get("specname") or n for n in dir(module)
             if pm.parse_hookimpl_opts(module, n) is not None}
    if not hooks:
        raise PluginError(
            f"{where} defines no peftbench hooks; decorate peftbench_register_methods"
            " (or peftbench_register_tasks) with @peftbench.hookimpl (an entry point names the module holding them)"
        )
    # a misspelled hook is left to check_pending, which names it (a hook without a spec is one: pluggy keeps a
    # caller for an unknown name once a plugin used it, so hasattr alone would call it known)
    if all(_has_spec(h) for h in hooks.values()):
        registered = []
        for attr in hooks:
            _call_hook(getattr(module, attr), label, registered.append)
        if not registered:
            raise PluginError(
                f"{where} registers nothing: its {', '.join(hooks)} never called register(...);"
                " call register(YourMethod()) inside the hook"
            )
    try:
        pm.register(module, name=name)
    except (pluggy.PluginValidationError, ValueError) as e:  # a hook's signature; a module registered twice
        raise PluginError(f"{where}: {first_line(e)}") from e


def _has_spec(hook: str) -> bool:
    """A hook peftbench declares (pluggy also keeps a caller, without a spec, for an unknown name a plugin used)."""
    return getattr(getattr(pm.hook, hook, None), "spec", None) is not None


def _call_hook(fn, plugin: str, register):
    """Call one register-hook; an exception inside it is the plugin's fault, reported in one line."""
    import inspect

    try:
        takes = "register" in inspect.signature(fn).parameters
        return fn(**({"register": register} if takes else {}))
    except PluginError:
        raise
    except Exception as e:
        raise PluginError(
            f"plugin {plugin}: {getattr(fn, '__name__', 'hook')} raised {type(e).__name__}: {first_line(e)};"
            " fix the plugin or leave it out"
        ) from e


def _check_hooks():
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as e:
        import re

        from .errors import closest

        hook = re.search(r"unknown hook '([^']+)'", str(e))
        if hook:  # a misspelled hook: name it and the hooks there are, not the module object
            known = [h for h in dir(pm.hook) if h.startswith("peftbench_") and _has_spec(h)]
            raise PluginError(f"plugin {pm.get_name(e.plugin)}: unknown hook {hook.group(1)!r}"
                              f"{closest(hook.group(1), known)}; the hooks: {', '.join(sorted(known))}") from e
        raise PluginError(f"plugin {pm.get_name(e.plugin)}: {first_line(e)}") from e


class _Duplicate(PluginError):
    """Two plugins registered one name (the message names both)."""


def _collect(hook, kind: str, base_class) -> dict:
    """Call each implementation of a register-hook with its own callback, so that every
    registered object knows its plugin and a duplicate names both plugins."""
    found: dict = {}
    for impl in hook.get_hookimpls():
        plugin = impl.plugin_name

        def register(obj, _plugin=plugin):
            if not isinstance(obj, base_class):
                raise PluginError(f"plugin {_plugin} registered {obj!r}, which is not a {base_class.__name__}")
            name = getattr(obj, "name", None)
            if not isinstance(name, str) or not NAME_RE.match(name):
                raise PluginError(
                    f"plugin {_plugin} registered a {kind} named {name!r}; names must be lowercase "
                    "letters, digits, '-' or '_', starting with a letter"
                )
            if name in found:
                raise _Duplicate(
                    f"{kind} {name!r} is registered twice: by plugin {found[name].plugin} and by plugin "
                    f"{_plugin}; rename one of them"
                )
            obj.plugin = _plugin
            if hasattr(obj, "validate"):
                try:
                    obj.validate()
                except _Duplicate:  # raised by a registry the validation read (a task's metrics): names its plugins
                    raise
                except PluginError as e:  # name the plugin that registered it
                    raise PluginError(f"plugin {_plugin}: {e}") from e
            found[name] = obj

        _call_hook(impl.function, plugin, register)
    return found


def get_methods() -> dict:
    """name -> Method, in registration order (built-ins first)."""
    from .method import Method

    load_plugins()
    return _collect(pm.hook.peftbench_register_methods, "method", Method)


def get_tasks() -> dict:
    """name -> Task."""
    from .tasks import Task

    load_plugins()
    return _collect(pm.hook.peftbench_register_tasks, "task", Task)


def get_metrics() -> dict:
    """name -> Metric."""
    from .tasks import Metric

    load_plugins()
    return _collect(pm.hook.peftbench_register_metrics, "metric", Metric)


def get_method(name: str):
    methods = get_methods()
    if name not in methods:
        raise PluginError(f"unknown method {name!r}{closest(name, methods)}; `peftbench methods` lists them")
    return methods[name]


def get_task(name: str):
    tasks = get_tasks()
    if name not in tasks:
        raise PluginError(f"unknown task {name!r}{closest(name, tasks)}; `peftbench tasks` lists them")
    return tasks[name]


def plugin_origin(name: str) -> dict:
    """Where a registered plugin came from and a content hash of its module file:
    ``{"plugin", "kind" (built-in / entry point / file), "module", "file", "sha256",
    ["distribution", "version"]}``. The hash covers the plugin module's own file only; for a
    package, the distribution version stands for the rest of it."""
    from .provenance import file_sha256

    module = pm.get_plugin(name)
    kind = "built-in" if name in DEFAULT_PLUGINS else ("file" if name in _loaded_files.values() else "entry point")
    info = {"plugin": name, "kind": kind, "module": getattr(module, "__name__", None), **_origins.get(name, {})}
    info["kind"] = kind
    path = getattr(module, "__file__", None)
    info["file"] = str(path) if path else None
    info["sha256"] = file_sha256(path) if path and Path(path).is_file() else None
    return info


def run_plugins(spec: dict) -> dict | None:
    """What a record says of the plugins its run's method and task came from (``plugin_origin`` of each), for
    a run that failed before it said so itself too; None where they cannot be found (a plugin that failed to load)."""
    try:
        load_plugins(spec.get("plugins", ()))
        return {"method": plugin_origin(get_method(spec["method"]).plugin),
                "task": plugin_origin(get_task(spec["task"]).plugin)}
    except Exception:
        return None


def code_hash(name: str) -> str | None:
    """What identifies a plugin's code in run ids: the content hash of its module file, plus the
    distribution's version for a plugin from a package."""
    info = plugin_origin(name)
    if not info["sha256"]:
        return info.get("version")
    return info["sha256"][:16] + (f"@{info['version']}" if info.get("version") else "")
