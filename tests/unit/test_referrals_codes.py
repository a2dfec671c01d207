"""ICD-10-CM checks against the table shipped with the referrals service."""

from __future__ import annotations

import pytest

from services.referrals.codes import (
    CODE_FORMAT,
    CodeTable,
    DiagnosisCode,
    InvalidDiagnosisCode,
    default_table,
    normalize,
)


@pytest.fixture(scope="module")
def table() -> CodeTable:
    return default_table()


def test_m54_5_is_refused_naming_its_three_replacements(table: CodeTable) -> None:
    with pytest.raises(InvalidDiagnosisCode) as caught:
        table.check("M54.5")
    message = str(caught.value)
    assert "deleted" in message and "2021-10-01" in message
    for code in ("M54.50", "M54.51", "M54.59"):
        assert code in message
    assert "Vertebrogenic low back pain" in message


def test_other_deleted_codes_name_theirs(table: CodeTable) -> None:
    with pytest.raises(InvalidDiagnosisCode, match=r"R51\.0.*R51\.9"):
        table.check("R51")
    with pytest.raises(InvalidDiagnosisCode, match=r"M79\.10.*M79\.18"):
        table.check("m79.1")


def test_valid_codes_come_back_normalized_with_their_description(table: CodeTable) -> None:
    assert table.check("M54.50") == DiagnosisCode("M54.50", "Low back pain, unspecified")
    assert table.check(" m5450 ") == DiagnosisCode("M54.50", "Low back pain, unspecified")
    assert table.check("s134xxa").code == "S13.4XXA"
    assert table.check("R52").code == "R52"


@pytest.mark.parametrize("raw", ["", "54.50", "MM4.5", "M54.50000", "M5", "M54..5", "M54-50"])
def test_malformed_codes_are_refused_as_not_icd10(table: CodeTable, raw: str) -> None:
    with pytest.raises(InvalidDiagnosisCode, match="not an ICD-10-CM code"):
        table.check(raw)


def test_a_category_is_not_a_billable_code(table: CodeTable) -> None:
    with pytest.raises(InvalidDiagnosisCode, match=r"category.*M54\.12"):
        table.check("M54")


def test_a_well_formed_code_outside_the_table_is_refused_saying_so(table: CodeTable) -> None:
    with pytest.raises(InvalidDiagnosisCode, match="not in this service's ICD-10-CM table"):
        table.check("E11.9")


def test_check_all_dedupes_and_reports_every_problem_at_once(table: CodeTable) -> None:
    assert [c.code for c in table.check_all(["M54.2", "m54.2", "M62.830"])] == [
        "M54.2",
        "M62.830",
    ]
    with pytest.raises(InvalidDiagnosisCode) as caught:
        table.check_all(["M54.5", "XYZ", "M54.2"])
    assert "M54.50" in str(caught.value) and "'XYZ'" in str(caught.value)
    with pytest.raises(InvalidDiagnosisCode, match="at least one"):
        table.check_all([])


def test_the_shipped_table_is_consistent() -> None:
    table = default_table()
    codes = list(table._codes)
    assert len(codes) > 100 and len(set(codes)) == len(codes)
    for code in codes:
        assert CODE_FORMAT.match(code), code
        assert normalize(code) == code
        assert table.describe(code)
    for gone in table._deleted.values():
        assert gone.code not in table
        assert all(r in table for r in gone.replaced_by), gone
