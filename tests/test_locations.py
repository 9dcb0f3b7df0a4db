"""training.runs.locations: telling a server URL from a file's path, and hiding its password."""

import pytest

from training.runs.locations import is_server_location, redacted, without_password


@pytest.mark.parametrize(
    "location, shown",
    [
        ("postgresql://ana:s3cret@db.lab:5432/runs", "postgresql://ana:***@db.lab:5432/runs"),
        ("postgres://ana:p%40ss@db.lab/runs?sslmode=require", "postgres://ana:***@db.lab/runs?sslmode=require"),
        ("postgresql://ana@db.lab/runs?password=s3cret&sslmode=require",
         "postgresql://ana@db.lab/runs?password=***&sslmode=require"),
        ("postgresql://db.lab/runs", "postgresql://db.lab/runs"),
        ("host=db.lab password=s3cret dbname=runs", "host=db.lab password=*** dbname=runs"),
        ("host=db.lab password = 'with space' dbname=runs", "host=db.lab password = *** dbname=runs"),
        ("runs/clipwatch.db", "runs/clipwatch.db"),
    ],
)  # fmt: skip
def test_redacted_hides_the_password_and_keeps_the_rest(location, shown):
    assert redacted(location) == shown


@pytest.mark.parametrize(
    "location, server",
    [("postgresql://h/db", True), ("POSTGRES://h/db", True), ("host=h dbname=runs", True),
     ("dbname=runs", True), ("runs/clipwatch.db", False), ("postgresql.db", False),
     ("my host=1.db", False), (None, False)],
)  # fmt: skip
def test_a_server_location_is_a_url_or_a_keyword_string(location, server):
    assert is_server_location(location) is server


def test_without_password_hides_it_in_any_text_even_decoded():
    location = "postgresql://ana:p%40ss@db.lab/runs"
    message = f"connection to {location} failed for ana with p@ss and p%40ss"
    hidden = without_password(message, location)
    assert "p@ss" not in hidden and "p%40ss" not in hidden
    assert "postgresql://ana:***@db.lab/runs" in hidden
