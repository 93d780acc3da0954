"""The paper's published numbers (Tables 2 and 3), and how the kit's metrics map onto them.

The numbers live in ``paper_tables.json`` inside the package (a verbatim copy of
``shared/paper-tables.json``), so the kit never reads anything outside itself.
Accuracies are percent; DWF rows are mean +- std over five runs, the other rows
a single number (``std`` is ``None``).

Table 2 (FGSM): columns "SA", "0.01" ... "0.09"  <->  metrics "SA", "fgsm:0.01" ... "fgsm:0.09".
Table 3 (PGD):  columns "10" ... "50", "100 (MS)", "100 (A)"  <->  metrics "pgd:10" ...
"pgd:50", "pgd:100-ms", "pgd:100-a".

A run on ``cifar10-subset`` or ``synthetic`` data is compared with the paper's
CIFAR-10 numbers; :func:`comparability_note` says how far that comparison goes.
"""
import functools
import json
from importlib import resources

TABLE2_COLUMNS: tuple[str, ...] = ("SA",) + tuple(f"0.0{i}" for i in range(1, 10))
TABLE3_COLUMNS: tuple[str, ...] = ("10", "20", "30", "40", "50", "100 (MS)", "100 (A)")


# paper column -> the kit's metric key (the two tables' column names do not overlap)
METRIC_FOR_COLUMN: dict[str, str] = {
    "SA": "SA",
    **{c: f"fgsm:{c}" for c in TABLE2_COLUMNS[1:]},
    **{c: f"pgd:{c}" for c in ("10", "20", "30", "40", "50")},
    "100 (MS)": "pgd:100-ms",
    "100 (A)": "pgd:100-a",
}


COLUMN_FOR_METRIC: dict[str, str] = {m: c for c, m in METRIC_FOR_COLUMN.items()}


# short table name -> key in paper_tables.json
TABLE_KEYS: dict[str, str] = {"table2": "table2_fgsm", "table3": "table3_pgd"}
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {"table2": TABLE2_COLUMNS, "table3": TABLE3_COLUMNS}


# the kit's dataset name -> the paper's dataset it is compared with
PAPER_DATASET: dict[str, str] = {
    "cifar10": "cifar10",
    "cifar10-subset": "cifar10",
    "synthetic": "cifar10",
    "svhn": "svhn",
}


DATASET_LABELS: dict[str, str] = {"cifar10": "CIFAR-10", "svhn": "SVHN"}


# the plain networks of Tables 2-3 (standard training, no adversarial training), as the tables
# label their rows; the kit builds none of them except ResNet-18 (a run's benign expert)
PLAIN_NETWORK_ROWS: frozenset[str] = frozenset({
    "VGG-19", "ResNet-18", "ResNet-34", "ResNet-50", "DenseNet-121", "DenseNet-169",
    "GoogLeNet", "Inception-V3", "Xception", "MobileNet-V2",
})


@functools.lru_cache(maxsize=1)
def _load() -> str:
    return resources.files("dwf_lab").joinpath("reporting", "paper_tables.json").read_text(encoding="utf-8")


def paper_tables() -> dict:
    """The packaged Tables 2 and 3 as a dict (a fresh copy: safe to modify)."""
    return json.loads(_load())


def _table_key(table: str) -> str:
    if table in TABLE_KEYS:
        return TABLE_KEYS[table]
    if table in TABLE_KEYS.values():
        return table
    raise ValueError(f"unknown table {table!r}; use 'table2' (FGSM) or 'table3' (PGD)")


def paper_dataset(dataset: str | None) -> str | None:
    """The paper's dataset a run on ``dataset`` is compared with, or None (e.g. MNIST)."""
    if dataset is None:
        return None
    return PAPER_DATASET.get(dataset.lower())


def paper_rows(table: str, dataset: str | None) -> list[str]:
    """The rows the paper reports for ``table`` on (the paper's match of) ``dataset``, in order."""
    key, ds = _table_key(table), paper_dataset(dataset)
    if ds is None:
        return []
    return list(paper_tables()[key].get(ds, {}))


def paper_row_order(dataset: str | None = None) -> list[str]:
    """Every row the paper has for ``dataset`` (Table 2 order, then Table 3-only rows).

    With ``dataset=None``: the rows of all datasets, CIFAR-10 first.
    """
    tables = paper_tables()
    datasets = [paper_dataset(dataset)] if dataset is not None else ["cifar10", "svhn"]
    order: list[str] = []
    for ds in datasets:
        if ds is None:
            continue
        for key in TABLE_KEYS.values():
            for row in tables[key].get(ds, {}):
                if row not in order:
                    order.append(row)
    return order


def paper_value(table: str, dataset: str, row: str,
                column: str) -> tuple[float | None, float | None] | None:
    """(mean, std) the paper reports in ``table`` for ``row`` and ``column``; None if absent.

    ``table`` is "table2"/"table3" (or the JSON keys "table2_fgsm"/"table3_pgd");
    ``column`` is a paper column ("SA", "0.03", "20", "100 (MS)") or the kit's metric
    key for it ("fgsm:0.03", "pgd:20", "pgd:100-ms"). ``dataset`` may be a kit
    name: "cifar10-subset" and "synthetic" read the CIFAR-10 numbers.
    """
    key, ds = _table_key(table), paper_dataset(dataset)
    if ds is None:
        return None
    column = COLUMN_FOR_METRIC.get(column, column)
    cell = paper_tables()[key].get(ds, {}).get(row, {}).get(column)
    if cell is None:
        return None
    return cell.get("mean"), cell.get("std")


def comparability_note(dataset: str | None) -> str:
    """One sentence on how far a run on ``dataset`` can be compared with the paper."""
    ds = paper_dataset(dataset)
    if dataset is None:
        return "Dataset unknown: the paper's numbers are shown for orientation only."
    if ds is None:
        return (f"The paper reports no numbers for {dataset!r}: only this run's "
                "numbers are shown.")
    label = DATASET_LABELS[ds]
    if dataset == "synthetic":
        return ("Synthetic (generated) data: NOT comparable with the paper. Its CIFAR-10 "
                "numbers are shown only to show the layout; do not read the gap.")
    if dataset == "cifar10-subset":
        return ("Real CIFAR-10 images, but a small subset (training on a fraction of the "
                "training set, testing on the first test images): same protocol as the "
                f"paper's {label} columns, lower absolute numbers are expected.")
    return f"Same dataset as the paper's {label} columns: directly comparable."


def is_comparable(dataset: str | None) -> bool:
    """True when the paper's numbers are a fair reference for this dataset (not synthetic)."""
    return paper_dataset(dataset) is not None and dataset != "synthetic"
