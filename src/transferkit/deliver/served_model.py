"""The file MLflow runs to load the registered model (models-from-code: nothing is pickled).

See serving.py. It is logged with the model; import it nowhere else.
"""

from mlflow.models import set_model

from transferkit.deliver.serving import Classifier

set_model(Classifier())
