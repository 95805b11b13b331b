"""The FAISS index file format's shared vocabulary: metric and scalar-quantizer type
numbers as FAISS writes them (faiss/MetricType.h, faiss/impl/ScalarQuantizer.h)."""

# FAISS's MetricType values and the jann metric each is.
METRICS = {0: "ip", 1: "l2"}
METRIC_CODES = {name: code for code, name in METRICS.items()}
# Four-byte class codes of IndexFlatL2 / IndexFlatIP and the metric each holds.
FLAT_CLASSES = {b"IxF2": "l2", b"IxFI": "ip"}
# FAISS's ScalarQuantizer::QuantizerType values and jann's names of them.
QTYPE_CODES = {0: "SQ8", 1: "SQ4", 2: "SQ8_uniform", 3: "SQ4_uniform", 4: "SQfp16",
               5: "SQ8_direct", 6: "SQ6", 7: "SQbf16"}
