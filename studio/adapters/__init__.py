"""Small files that change a model without being one: LoRAs (loras/) and textual-inversion embeddings
(embeddings/). Each is named in a request, identified by its sha256, and found by hash under another name."""
