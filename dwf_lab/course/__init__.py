"""The course: the papermill runner, a notebook's set-up (``ctx``), what notebooks compute,
the widgets and how figures are displayed."""
