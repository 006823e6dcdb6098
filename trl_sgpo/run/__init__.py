"""The run around the steps: the phase callback (`phases`), sample tables (`sample_table`), Step 1's readiness
(`readiness`) and initial drafts (`initial_drafts`), evaluation, saving and the model card, output-dir protection,
and the models under DeepSpeed."""
