"""Reading labelled image folders, few-shot splits and the drawn demo dataset."""
