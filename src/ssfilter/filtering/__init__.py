"""SSFilter's two filters: the in-batch filter (paper §3.2-3.5) and the dataset filter (§3.6).

Modules, bottom to top (each imports only those above it in this list):

* ``patch_scoring`` -- patch comparison scores ``A`` inside a batch (Algorithm 1).
* ``uncertainty`` -- MC-dropout uncertainty ``U`` and accumulated anomaly maps (§3.3).
* ``synergy`` -- the synergy selection: which images of a batch are kept, which are material candidates.
* ``materials`` -- material extraction from the candidates (Eq. 11); ``random_draws`` -- seeded single draws;
  ``material_bank`` -- the recent materials; ``foreground`` -- object masks of kept images;
  ``synthesis_registry`` -- the synthesis methods by name (Table 5); ``synthesis`` -- materials pasted onto
  kept images (restoration, §3.5, Eq. 13, "ours"); ``cutpaste`` / ``draem`` -- the Table 5 baselines;
  ``material_counts`` -- materials per synthetic image (Table 9 rules).
* ``batch_filter`` -- :class:`BatchFilter`, the in-batch filter joining all of the above for one batch.
* ``filter_outputs`` -- the dataset filter's records, summary, ``filter.csv`` / ``filter.json``.
* ``clean_export`` -- the kept images laid out as a clean training folder.
* ``dataset_filter`` -- :class:`DatasetFilter` / :func:`filter_dataset`, the kappa1/kappa2 vote.
"""
