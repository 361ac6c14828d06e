//! Training and evaluation of the classifier heads (see `ladder train` and `ladder eval`).
