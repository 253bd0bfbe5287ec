# Tables of paired comparisons: the default run's ablations, and the regime study
# (`snakemake --cores N regime`, not part of the default run).


rule compare:
    input:
        runs=lambda w: regime_runs() if w.kind == "regime" else run_metrics(),
    output:
        table="reports/tables/{kind}.md",
        csv=report(
            "reports/tables/{kind}.csv",
            caption="../report/comparisons.rst",
            category="4. Paired comparisons",
            labels={"table": "{kind}"},
        ),
        tex="reports/tables/{kind}.tex",
    log:
        f"{LOGS}/compare/{{kind}}.log",
    wildcard_constraints:
        kind="ablation|regime",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        pairs=lambda w: [f"{a}:{b}" for a, b in comparison_pairs(w.kind)],
        stem=lambda w: f"reports/tables/{w.kind}",
    shell:
        "python -m kshot compare --kind {wildcards.kind} --runs {input.runs} "
        "--pairs {params.pairs} --out-stem {params.stem} > {log} 2>&1"


rule regime:
    input:
        "reports/tables/regime.md",
