"""Who may do what: policy documents, built-in roles, and their evaluation."""
