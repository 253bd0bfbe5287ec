# Tables and figures from the runs' metrics.


rule aggregate:
    input:
        runs=run_metrics(),
        sources=expand("data/checkpoints/{source}/metrics.json", source=used_sources()),
    output:
        table="reports/tables/results.md",
        csv="reports/tables/results.csv",
        figure="reports/figures/accuracy_vs_k.png",
    params:
        tables=subpath(output.table, parent=True),
        figures=subpath(output.figure, parent=True),
    log:
        f"{LOGS}/aggregate.log",
    threads: 1
    resources:
        mem_mb=2000,
    shell:
        "python -m kshot aggregate --runs {input.runs} --sources {input.sources} "
        "--tables-dir {params.tables} --figures-dir {params.figures} > {log} 2>&1"
