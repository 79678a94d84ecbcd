"""The contract matrix as pytest tests, added by ``pytest -p peftbench.testing --peftbench-methods ...``."""

import pytest

from peftbench.testing import ContractFailure, NotApplicable, checks_for, parse_families


def pytest_generate_tests(metafunc):
    from peftbench.plugins import get_methods, load_plugins

    config = metafunc.config
    load_plugins(config.getoption("peftbench_plugins"))
    methods = get_methods()
    names = [n.strip() for n in config.getoption("peftbench_methods").split(",") if n.strip()]
    unknown = [n for n in names if n not in methods]
    if unknown:
        raise pytest.UsageError(f"--peftbench-methods: unknown method(s) {', '.join(unknown)}")
    try:
        families = parse_families(config.getoption("peftbench_families"))
    except ValueError as e:
        raise pytest.UsageError(f"--peftbench-families: {e}") from None
    # causal LMs get the two generation checks too (loss on target tokens only; generation)
    cases = [(n, f, c) for n in names for f in families for c in checks_for(f)]
    metafunc.parametrize("method,family,check", [(methods[n], f, c) for n, f, c in cases],
                         ids=[f"{n}-{f}-{c.replace(' ', '_')}" for n, f, c in cases])


def test_peftbench_contract(method, family, check):
    try:
        checks_for(family)[check](method, family)
    except NotApplicable as e:
        pytest.skip(f"{method.name} does not apply to {family}: {e}")
    except ContractFailure as e:
        pytest.fail(f"{method.name} on {family}: {e}", pytrace=False)
