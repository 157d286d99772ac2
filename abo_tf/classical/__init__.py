"""Classical baselines: image features cached per split, scikit-learn classifiers on them, compared with the CNNs."""

# The modules in the order the data goes through them:
#   descriptors    OpenCV colour / shape / texture descriptors of one image
#   feature_spec   which features (handcrafted, a backbone, a run's model), checked
#   feature_cache  cache key, folder layout, reading and writing one split's features
#   extraction     descriptors or a CNN over the records' splits, into the cache
#   classifiers    scikit-learn pipelines: build, fit (in memory or streamed), predict
#   search         the hyperparameter search on the validation split
#   evaluation     validation and test metrics, reports, inference speed
#   persistence    model.skops and baseline.json, loaded only when unchanged and trusted
#   interpretation feature-group importance and the largest coefficients
#   baseline       one baseline end to end, and every baseline of a command
#   comparison     baselines and CNN runs side by side
