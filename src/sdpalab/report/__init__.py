"""Reports: console tables (``console``), plots (``plots``), the single-file HTML report
(``html``), run comparison (``compare``) and the search's views (``search_report``).

Nothing is imported here (matplotlib and pandas are not cheap), so importing
``sdpalab.report.progress`` stays light.
"""
