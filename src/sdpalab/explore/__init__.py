"""Exploring the space: grid sweeps (``grid``), the Optuna search (``search``), the Pareto front
(``pareto``) and the recommendation on it (``recommend``), one choice for every shape
(``shapes``), and which axes matter (``sensitivity``)."""
