"""Rule render_tables: every table of the study on one sortable, filterable page for the HTML report."""
from esmsae.pipeline.keys import keyed
from esmsae.pipeline.logs import log_to
from esmsae.report.tables_page import render_tables


def main(smk):
    with log_to(smk.log[0]):
        render_tables(keyed(smk.input, "table", ("name",)), smk.output.page)


if __name__ == "__main__":
    main(snakemake)  # noqa: F821 (injected by Snakemake)
