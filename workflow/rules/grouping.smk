# Activation extraction and neuron grouping: the inputs of the grouped methods and of the search.


# One file per benchmark, k and activation spec (tag): the neuron x image patterns of every
# groupable layer on every episode (evaluation, search and selection).
rule activations:
    input:
        unpack(inputs_of),
    output:
        "{root}/activations/{benchmark}/k{k}/{tag}.pt",
    log:
        "{root}/logs/activations/{benchmark}_k{k}_{tag}.log",
    priority: 20  # the searches wait for it
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=lambda w: job_json("activations", w),
    shell:
        "python -m kshot activations --benchmark {wildcards.benchmark} --k {wildcards.k} --tag {wildcards.tag} "
        "--checkpoint {input.ckpt} --target {input.target} --episodes {input.episodes} "
        "--out {output} --threads {threads} --params-json {params.cfg:q} --log {log}"


# One file per benchmark, grouped method and k: the assignments of every evaluation episode, with
# their cluster quality (the .json summary). grouped_rl's counts come from its search.
rule group:
    input:
        unpack(inputs_of),
        acts=lambda w: activations_file(w.benchmark, w.k, activation_tag(w.method)),
        search=search_input,
    output:
        groups="{root}/groups/{benchmark}/{method}/k{k}.pt",
        summary="{root}/groups/{benchmark}/{method}/k{k}.json",
    log:
        "{root}/logs/group/{benchmark}_{method}_k{k}.log",
    conda:
        "../../environment.yml"
    threads: 1
    resources:
        mem_mb=2000,
    params:
        cfg=lambda w: job_json("group", w),
        search=lambda w, input: f"--search {input.search}" if input.search else "",
    shell:
        "python -m kshot group --benchmark {wildcards.benchmark} --method {wildcards.method} "
        "--k {wildcards.k} --checkpoint {input.ckpt} --target {input.target} "
        "--episodes {input.episodes} --activations {input.acts} {params.search} "
        "--out {output.groups} --summary {output.summary} --threads {threads} "
        "--params-json {params.cfg:q} --log {log}"
