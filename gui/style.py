"""The application style sheet: a calm light theme with one accent colour for main actions."""

ACCENT = "#1f6feb"

STYLE_SHEET = f"""
QMainWindow, QWidget {{ font-size: 10pt; }}
QTabWidget::pane {{ border-top: 1px solid #d0d7de; }}
QTabBar::tab {{ padding: 7px 18px; margin-right: 2px; font-weight: 600; color: #444; }}
QTabBar::tab:selected {{ color: {ACCENT}; border-bottom: 3px solid {ACCENT}; }}
QGroupBox {{ font-weight: 600; border: 1px solid #d0d7de; border-radius: 6px; margin-top: 12px; padding: 10px 8px 8px 8px; }}
QGroupBox::title {{ subcontrol-origin: margin; left: 10px; padding: 0 4px; color: #24292f; }}
QLabel#help {{ color: #57606a; }}
QLabel#heading {{ color: #24292f; font-size: 14pt; font-weight: 700; }}
QLabel#hover {{ color: #24292f; font-family: "DejaVu Sans Mono"; }}
QLabel#warning {{ background: #fff4e5; color: #8a4b00; border: 1px solid #f0c36d; border-radius: 4px; padding: 6px; }}
QLabel#busy[busy="true"] {{ color: #b35900; font-weight: 600; }}
QPushButton {{ padding: 5px 12px; }}
QPushButton#primary {{ background: {ACCENT}; color: white; border: 1px solid #1a5fc9; border-radius: 4px; font-weight: 600; padding: 6px 16px; }}
QPushButton#primary:hover {{ background: #1a5fc9; }}
QPushButton#primary:disabled {{ background: #9db9e8; border-color: #9db9e8; }}
QPlainTextEdit#log {{ font-family: "DejaVu Sans Mono"; font-size: 9pt; }}
QTextBrowser {{ background: #ffffff; }}
"""
