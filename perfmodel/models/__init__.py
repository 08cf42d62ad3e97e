"""Plain torch cost models over stage graphs (GCN, GraphSAGE, GINE, GAT) and their losses; TVM-free."""

from perfmodel.models.gnn import (
    GAT, GCN, GINE, MODELS, READOUTS, SAGE, CostGNN, Ensemble, build_model, count_parameters,
)
from perfmodel.models.losses import CombinedLoss, LambdaRankLoss, MSELoss, RankNetLoss, batch_loss

__all__ = ["CostGNN", "Ensemble", "GCN", "SAGE", "GINE", "GAT", "MODELS", "READOUTS", "build_model", "count_parameters",
           "MSELoss", "RankNetLoss", "LambdaRankLoss", "CombinedLoss", "batch_loss"]
