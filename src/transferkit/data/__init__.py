"""The user's data: where it comes from (sources), how it is checked and split (prepare), the prepared
manifest every later stage reads, and the one decoder per modality (images) that every stage, `predict`
and serving use."""
