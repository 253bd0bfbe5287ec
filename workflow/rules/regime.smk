# The regime study: `snakemake --cores N regime`. Not part of the default run.


rule regime_table:
    input:
        runs=regime_runs(),
    output:
        table="reports/tables/regime.md",
        csv="reports/tables/regime.csv",
        tex="reports/tables/regime.tex",
    log:
        f"{LOGS}/regime_table.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        pairs=[f"{a}:{b}" for a, b in config.get("regime", {}).get("pairs", [])],
        tables=subpath(output.table, parent=True),
    shell:
        "python -m kshot regime --runs {input.runs} --pairs {params.pairs} "
        "--tables-dir {params.tables} > {log} 2>&1"


rule regime:
    input:
        rules.regime_table.output,
