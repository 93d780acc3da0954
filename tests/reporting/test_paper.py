"""The paper's published numbers, as data (dwf_lab.reporting.paper): the packaged tables, cell look-ups
by column name or metric key, and what is comparable to them."""
import json
from pathlib import Path

import pytest

from dwf_lab.reporting.paper import (
    METRIC_FOR_COLUMN,
    PLAIN_NETWORK_ROWS,
    TABLE2_COLUMNS,
    TABLE3_COLUMNS,
    comparability_note,
    is_comparable,
    paper_tables,
    paper_value,
)

SHARED_TABLES = Path(__file__).resolve().parents[3] / "shared" / "paper-tables.json"


def test_packaged_tables_equal_shared_copy():
    if not SHARED_TABLES.exists():
        pytest.skip("no ../shared/paper-tables.json here")
    assert paper_tables() == json.loads(SHARED_TABLES.read_text(encoding="utf-8"))


def test_plain_network_rows_are_the_papers_undefended_rows():
    tables = paper_tables()
    rows = {r for key in ("table2_fgsm", "table3_pgd") for ds in ("cifar10", "svhn") for r in tables[key][ds]}
    assert PLAIN_NETWORK_ROWS <= rows
    assert rows - PLAIN_NETWORK_ROWS == {"ResNet-18 (FGSM-AT)", "ResNet-18 (PGD-AT)", "SoE", "ADVMoE", "DWF"}


def test_paper_values_for_known_cells():
    assert paper_value("table2", "cifar10", "DWF", "SA") == (91.19, 0.43)
    # kit dataset names map to CIFAR-10; metric keys work as well as column names
    assert paper_value("table2", "cifar10-subset", "DWF", "fgsm:0.09") == (41.24, 0.42)
    assert paper_value("table3", "synthetic", "ResNet-18 (PGD-AT)", "20") == (58.35, None)
    assert paper_value("table3_pgd", "svhn", "ADVMoE", "pgd:100-ms") == (8.13, None)
    assert paper_value("table3", "cifar10", "DWF", "100 (A)") == (64.32, 1.12)
    # absent: kit-only row, unknown column, dataset without paper numbers
    assert paper_value("table2", "cifar10", "FGSM expert 1", "SA") is None
    assert paper_value("table2", "cifar10", "DWF", "autoattack") is None
    assert paper_value("table2", "mnist", "DWF", "SA") is None
    with pytest.raises(ValueError, match="unknown table"):
        paper_value("table9", "cifar10", "DWF", "SA")


def test_column_metric_mapping():
    assert TABLE2_COLUMNS[0] == "SA" and TABLE2_COLUMNS[-1] == "0.09"
    assert METRIC_FOR_COLUMN["0.03"] == "fgsm:0.03"
    assert METRIC_FOR_COLUMN["100 (MS)"] == "pgd:100-ms"
    assert METRIC_FOR_COLUMN["100 (A)"] == "pgd:100-a"
    tables = paper_tables()
    assert list(TABLE2_COLUMNS) == tables["table2_fgsm"]["columns"]
    assert list(TABLE3_COLUMNS) == tables["table3_pgd"]["columns"]
    assert not is_comparable("synthetic") and is_comparable("cifar10")
    assert "NOT comparable" in comparability_note("synthetic")
